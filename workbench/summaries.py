"""Per-layer summaries of any analysis's results on normalised depth, as one tidy table.

Each analysis that has per-layer numbers names its ``summary`` (see ``workbench.analyses``); the
depth convention and ``LayerSummary`` live in ``workbench.axes``. The compare page overlays these
so models of different depths line up (as Jin et al. 2024 compare concept depth on l/L).
"""

from __future__ import annotations

import pandas as pd

from workbench import registry
from workbench.axes import LayerSummary, block_depth, slot_depth  # noqa: F401 (re-exported)


def summarise(analysis: str, result) -> list[LayerSummary]:
    """The per-layer summaries of one result of the analysis called ``analysis`` (none if it has none)."""
    summary = registry.entry(analysis).summary
    return summary(result) if summary is not None else []


def summary_table(summaries: list[LayerSummary]) -> pd.DataFrame:
    """Tidy table: one row per (model, analysis, metric, layer) with its depth and value."""
    rows = [
        {"model": s.model_name, "analysis": s.analysis, "metric": s.metric, "layer": label,
         "depth": float(d), "value": float(v)}
        for s in summaries for label, d, v in zip(s.layer_labels, s.depth, s.values, strict=True)
    ]
    return pd.DataFrame(rows, columns=["model", "analysis", "metric", "layer", "depth", "value"])
