"""Figures for patching: activation patching, AtP and RelP heatmaps side by side, and the
faithfulness scoreboard (correlation table and scatter plots against activation patching)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.faithfulness import PAPER_GPT2_SMALL_PEARSON, FaithfulnessResult
from workbench.analyses.patching import HEADS, PatchingResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token

DIVERGING = "PuOr"  # colour-blind-safe diverging scale for signed effects
METHOD_TITLES = {
    "act": "activation patching", "atp": "attribution patching (AtP)", "relp": "relevance patching (RelP)",
}
COMPONENT_TITLES = {
    "resid": "residual stream", "attn": "attention output", "mlp": "MLP output", HEADS: "attention heads",
}


def method_heatmaps(result: PatchingResult, component: str) -> go.Figure:
    """(layer x position) — or (layer x head) — maps of the three methods on one colour range."""
    maps = [result.scores(m, component) for m in METHOD_TITLES]
    limit = float(max(np.abs(m).max() for m in maps)) or 1.0
    n_layers, width = maps[0].shape
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(METHOD_TITLES.values()), shared_yaxes=True)
    if component == HEADS:
        ticktext, x_title = [str(h) for h in range(width)], "head"
    else:
        ticktext = [f"{display_token(c)}→{display_token(k)}" if c != k else display_token(c)
                    for c, k in zip(result.clean_tokens, result.corrupted_tokens, strict=True)]
        x_title = "position (clean→corrupted token)"
    for col, scores in enumerate(maps, start=1):
        fig.add_trace(
            go.Heatmap(
                z=scores, x=np.arange(width), y=np.arange(n_layers), colorscale=DIVERGING, zmid=0.0,
                zmin=-limit, zmax=limit, showscale=col == 3, colorbar={"title": {"text": "effect on m"}},
                customdata=np.broadcast_to(np.array(ticktext, dtype=object), scores.shape),
                hovertemplate="layer %{y}, %{customdata}: %{z:.4f}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(title=x_title, tickmode="array", tickvals=list(range(width)), ticktext=ticktext,
                         row=1, col=col)
    fig.update_yaxes(title="layer", tickmode="array", tickvals=list(range(n_layers)),
                     ticktext=[str(i) for i in range(n_layers)], row=1, col=1)
    fig.update_layout(
        title=f"{COMPONENT_TITLES[component]}: {result.model_name} "
        f"(LD clean {result.ld_clean:.3f}, corrupted {result.ld_corrupted:.3f})",
        height=max(380, 16 * n_layers + 200), margin={"l": 60, "r": 20, "t": 80, "b": 80},
    )
    return fig


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
        title=f"{measure} vs activation patching: {result.model_name}, {result.n_pairs} IOI pairs",
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
