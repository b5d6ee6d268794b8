"""LayerLens workbench: look inside transformer language models layer by layer.

The package is the backend of the Streamlit front end and never imports streamlit.
Data flows one way: models.catalog -> models.adapter/loader -> tracing ->
analyses -> store -> figures; ``service`` ties them together for the pages.
"""

__version__ = "0.1.0"

__all__ = ["Notebook", "Workbench", "__version__"]


def __getattr__(name: str):
    """``from workbench import Workbench`` / ``Notebook``, imported on first use so that
    ``layerlens --help`` and ``import workbench`` stay quick (torch loads only when needed)."""
    if name == "Workbench":
        from workbench.service import Workbench

        return Workbench
    if name == "Notebook":
        from workbench.notebook import Notebook

        return Notebook
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
