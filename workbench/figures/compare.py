"""Figures for comparing models: per-layer summaries of any analyses on normalised depth l/L,
one panel per metric, one colour per model (see ``workbench.summaries`` for the depth convention)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures import LINE_COLORS, plain
from workbench.figures.axes import log_axis
from workbench.summaries import LayerSummary

DASHES = ("solid", "dash", "dot", "dashdot")


def summary_overlay(rows: list[LayerSummary], title: str = "") -> go.Figure:
    """Every summary on one depth axis: a panel per metric, a line per model."""
    metrics = list(dict.fromkeys(r.metric for r in rows))
    models = list(dict.fromkeys(r.model_name for r in rows))
    cols = min(3, max(1, len(metrics)))
    n_rows = max(1, math.ceil(len(metrics) / cols))
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=metrics or [""], horizontal_spacing=0.07,
                        vertical_spacing=0.5 / n_rows)
    for row in rows:
        index = metrics.index(row.metric)
        model = models.index(row.model_name)
        name = plain(row.model_name)
        fig.add_trace(go.Scatter(
            x=row.depth, y=row.values, mode="lines+markers", name=name, legendgroup=row.model_name,
            showlegend=index == 0, marker={"size": 4},
            line={"color": LINE_COLORS[model % len(LINE_COLORS)], "dash": DASHES[model // len(LINE_COLORS) % 4]},
            customdata=list(row.layer_labels),
            hovertemplate=f"{name}<br>layer %{{customdata}} (l/L=%{{x:.2f}})<br>%{{y:.4g}}<extra></extra>",
        ), row=index // cols + 1, col=index % cols + 1)
    for index, metric in enumerate(metrics):
        if "rank" in metric:  # ranks span decades: a log axis labelled at decades, 1 (the top) on top
            values = np.concatenate([r.values for r in rows if r.metric == metric])
            log_axis(fig, values, reverse=True, row=index // cols + 1, col=index % cols + 1)
    fig.update_xaxes(range=[-0.02, 1.02], dtick=0.25)
    fig.update_xaxes(title_text="normalised depth l/L", row=n_rows)  # the bottom row only
    fig.update_layout(title=plain(title) or "Per-layer summaries on normalised depth", height=300 * n_rows + 100,
                      legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 0.995, "yanchor": "top",
                              "yref": "container"},
                      margin={"l": 50, "r": 20, "t": 90, "b": 60})
    fig.update_annotations(font_size=12)
    return fig
