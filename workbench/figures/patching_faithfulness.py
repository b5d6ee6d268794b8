"""Figures of the faithfulness scoreboard: AtP and RelP against activation patching over IOI pairs
(correlation table and scatter plots)."""

from __future__ import annotations

from functools import partial

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.patching_faithfulness import PAPER_GPT2_SMALL_PEARSON, FaithfulnessResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, plain
from workbench.figures.patching import COMPONENT_TITLES, METHOD_TITLES


def correlation_table(result: FaithfulnessResult, measure: str = "pearson") -> go.Figure:
    """Estimator x component table of one agreement measure, with the paper's GPT-2 values in hover."""
    table = getattr(result, measure)
    components = [str(c) for c in result.components]
    paper = np.array([[PAPER_GPT2_SMALL_PEARSON.get(c, (np.nan, np.nan))[e] for c in components]
                      for e in range(len(result.estimators))])
    text = [[f"{v:.3f}" for v in row] for row in table]
    fig = go.Figure(
        go.Heatmap(
            z=table, x=np.arange(len(components)), y=np.arange(len(result.estimators)),
            zmin=0 if measure == "topk_overlap" else -1, zmax=1, colorscale=SEQUENTIAL,
            text=text, texttemplate="%{text}", customdata=paper,
            hovertemplate="%{z:.3f} (paper, GPT-2 small Pearson: %{customdata:.3f})<extra></extra>",
            colorbar={"title": {"text": measure}},
        )
    )
    fig.update_layout(
        title=f"{measure} vs activation patching: {plain(result.model_name)}, {result.n_pairs} IOI pairs",
        xaxis={"tickmode": "array", "tickvals": list(range(len(components))),
               "ticktext": [COMPONENT_TITLES[c] for c in components]},
        yaxis={"tickmode": "array", "tickvals": list(range(len(result.estimators))),
               "ticktext": [METHOD_TITLES[str(e)] for e in result.estimators]},
        height=300, margin={"l": 200, "r": 20, "t": 60, "b": 60},
    )
    return fig


def scatter_grid(result: FaithfulnessResult) -> go.Figure:
    """One row per component: AtP vs activation patching | RelP vs activation patching, with y = x."""
    components = [str(c) for c in result.components]
    titles = [f"{COMPONENT_TITLES[c]}: {METHOD_TITLES[str(e)].split(' (')[0]} (r = {result.pearson[ei, ci]:.3f})"
              for ci, c in enumerate(components) for ei, e in enumerate(result.estimators)]
    fig = make_subplots(rows=len(components), cols=len(result.estimators), subplot_titles=titles)
    for ci, component in enumerate(components, start=1):
        for ei, estimator in enumerate(result.estimators, start=1):
            truth, estimate = result.points(str(estimator), component)
            low = float(min(truth.min(initial=0), estimate.min(initial=0)))
            high = float(max(truth.max(initial=0), estimate.max(initial=0)))
            fig.add_trace(go.Scatter(x=truth, y=estimate, mode="markers", showlegend=False,
                                     marker={"size": 4, "color": LINE_COLORS[ei - 1], "opacity": 0.6},
                                     hovertemplate="patching %{x:.4f}<br>estimate %{y:.4f}<extra></extra>"),
                          row=ci, col=ei)
            fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", showlegend=False,
                                     line={"color": "#777777", "dash": "dot"}, hoverinfo="skip"), row=ci, col=ei)
            fig.update_xaxes(title="activation patching", row=ci, col=ei)
            fig.update_yaxes(title="estimate", row=ci, col=ei)
    fig.update_layout(
        height=330 * len(components), title=f"Estimates vs activation patching ({result.n_pairs} pairs)"
    )
    return fig


FIGURES = {
    "pearson": partial(correlation_table, measure="pearson"),
    "spearman": partial(correlation_table, measure="spearman"),
    "topk_overlap": partial(correlation_table, measure="topk_overlap"),
    "scatter": scatter_grid,
}
