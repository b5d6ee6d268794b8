"""Figures of the shortcut grid: (source slot, target slot) heatmaps, fitted map beside the skip baseline."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.shortcut_grid import ShortcutGridResult
from workbench.figures import SEQUENTIAL, plain
from workbench.figures.axes import KL_FLOOR, keep_labels


def _pair(result: ShortcutGridResult, mapped: np.ndarray, skipped: np.ndarray, what: str, log: bool,
          title: str) -> go.Figure:
    """Two heatmaps on one colour scale: rows are source slots, columns target slots (NaN below the diagonal)."""
    x = np.arange(len(result.slots))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "fitted map h_l' := A h_l + b", "skip h_l' := h_l"))
    values = [np.maximum(v, KL_FLOOR) for v in (mapped, skipped)] if log else [mapped, skipped]
    shown = [np.log10(v) for v in values] if log else values
    finite = np.concatenate([v[np.isfinite(v)] for v in shown])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for col, (z, raw) in enumerate(zip(shown, (mapped, skipped), strict=True), start=1):
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=x, customdata=raw, colorscale=SEQUENTIAL, zmin=low, zmax=max(high, low + 1e-9),
            reversescale=log, showscale=col == 2,
            colorbar={"title": {"text": f"log10 {what}" if log else what}},
            hovertemplate=f"slot %{{y}} → slot %{{x}}: {what} %{{customdata:.4g}}<extra></extra>",
        ), row=1, col=col)
    labels = [str(label) for label in result.slot_labels]
    ticks = {"tickmode": "array", "tickvals": x.tolist(), "ticktext": labels}
    fig.update_xaxes(title_text="target slot l'", **ticks)
    fig.update_yaxes(title_text="source slot l", autorange="reversed", **ticks)
    fig.update_layout(title=f"{title}: {plain(result.model_name)}, {result.eval_tokens} held-out tokens, maps fitted "
                            f"on {result.fit_tokens} tokens", height=420, margin={"l": 70, "r": 20, "t": 90, "b": 60})
    return keep_labels(fig, xaxis=labels, yaxis=labels, xaxis2=labels, yaxis2=labels)


def kl(result: ShortcutGridResult) -> go.Figure:
    """Mean KL(final ‖ continued) per (source, target): lower is better (the colour scale is reversed)."""
    return _pair(result, result.kl_map, result.kl_skip, "KL (nats)", True,
                 "Blocks l..l'-1 replaced: KL to the model's output")


def top1(result: ShortcutGridResult) -> go.Figure:
    """Top-1 agreement with the model's final prediction per (source, target)."""
    return _pair(result, result.top1_map, result.top1_skip, "top-1 agreement", False,
                 "Blocks l..l'-1 replaced: top-1 agreement with the model")


FIGURES = {"kl": kl, "top1": top1}
