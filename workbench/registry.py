"""Analyses by name: the names the CLI, export bundles, shareable links and the compare page use.

Owns the lookup of an ``Analysis`` from its name (``analyses.ANALYSES``, nothing listed twice),
including the names older bundles recorded before the names were unified.
"""

from __future__ import annotations

from workbench.analyses import ANALYSES, Analysis, request_from_json  # noqa: F401 (request_from_json re-exported)
from workbench.errors import BadRequest

ENTRIES: dict[str, Analysis] = {analysis.name: analysis for analysis in ANALYSES}
# Names written by LayerLens before every analysis had one name (module == cache key == CLI name).
FORMER_NAMES = {"attention_sink_levels": "sink_levels", "tuned_lens_comparison": "tuned_lens"}


def entry(name: str) -> Analysis:
    """The analysis called ``name`` (or called so by an older bundle)."""
    name = FORMER_NAMES.get(name, name)
    if name not in ENTRIES:
        raise BadRequest(f"Unknown analysis {name!r}. Analyses: {', '.join(ENTRIES)}.")
    return ENTRIES[name]
