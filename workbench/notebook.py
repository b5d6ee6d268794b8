"""The notebook API: one call per analysis, results that draw their figures inline in Jupyter.

Owns the thin layer between a notebook and ``Workbench.run``: request fields as keyword
arguments (defaults from the analysis's request dataclass, validated as everywhere else), and a
``Shown`` result that Jupyter displays as its figures. The numbers are exactly the service's
(``Shown.result`` is what ``Workbench.run`` returned)::

    from workbench import Notebook

    nb = Notebook("smollm2-135m")
    lens = nb.logit_lens(prompt="The capital of France is", target=" Paris")   # draws in Jupyter
    lens.result.target_rank        # the result dataclass, as the service returns it
    lens.top_tokens                # attributes read through to the result
    nb.patching(clean="...", corrupted="...", answer=" Mary", wrong=" John").figure("resid")
    nb.analyses()                  # what can be called, with each request's fields

Every analysis of ``workbench.analyses.ANALYSES`` is a method of the same name.
"""

from __future__ import annotations

import dataclasses

from workbench.analyses import ANALYSES
from workbench.errors import BadRequest
from workbench.service import Workbench

_BY_NAME = {analysis.name: analysis for analysis in ANALYSES}


class Shown:
    """An analysis result that Jupyter shows as its figures; attributes read through to the result."""

    def __init__(self, analysis, model: str, request, result):
        self.analysis, self.model, self.request, self.result = analysis, model, request, result

    @property
    def figure_names(self) -> list[str]:
        return list(self.analysis.figures)

    def figure(self, name: str | None = None):
        """One figure (a plotly ``Figure``) by name; the first one by default."""
        return self.analysis.figure(name or self.figure_names[0], self.result)

    def figures(self) -> dict:
        return {name: self.analysis.figure(name, self.result) for name in self.figure_names}

    def _ipython_display_(self) -> None:  # Jupyter / IPython: every figure, inline
        from IPython.display import display

        for figure in self.figures().values():
            display(figure)

    def __getattr__(self, name: str):
        if name == "result":  # not yet set (during construction): no recursion
            raise AttributeError(name)
        return getattr(self.result, name)

    def __repr__(self) -> str:
        return f"<{self.analysis.title} on {self.model}: figures {', '.join(self.figure_names)}>"


class Notebook:
    """The analyses on one default model, one method each (``nb.logit_lens(prompt=...)``)."""

    def __init__(self, model: str = "smollm2-135m", workbench: Workbench | None = None):
        self.model = model
        self.workbench = workbench or Workbench()

    def analyses(self) -> dict[str, list[str]]:
        """Analysis name -> its request's fields."""
        return {name: [f.name for f in dataclasses.fields(a.Request)] for name, a in _BY_NAME.items()}

    def run(self, name: str, model: str | None = None, **fields) -> Shown:
        """Analysis ``name`` with its request built from ``fields`` (unset fields keep their defaults)."""
        if name not in _BY_NAME:
            raise BadRequest(f"No analysis {name!r}. Analyses: {', '.join(_BY_NAME)}.")
        analysis = _BY_NAME[name]
        request = analysis.request(fields)
        model = model or self.model
        return Shown(analysis, model, request, self.workbench.run(analysis, model, request))

    def __getattr__(self, name: str):
        if name in _BY_NAME:
            def call(model: str | None = None, **fields) -> Shown:
                return self.run(name, model, **fields)

            call.__name__ = name
            call.__doc__ = f"{_BY_NAME[name].title}: fields {', '.join(self.analyses()[name])}."
            return call
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}; analyses: {', '.join(_BY_NAME)}")

    def __dir__(self):
        return [*super().__dir__(), *_BY_NAME]
