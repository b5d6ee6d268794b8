"""LayerLens workbench: look inside transformer language models layer by layer.

The package is the backend of the Streamlit front end and never imports streamlit.
Data flows one way: models.catalog -> models.adapter/loader -> tracing ->
analyses -> store -> figures; ``service`` ties them together for the pages.
"""

__version__ = "0.1.0"
