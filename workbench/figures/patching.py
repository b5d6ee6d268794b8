"""Figures for patching: activation patching, AtP and RelP heatmaps side by side, per component."""

from __future__ import annotations

from functools import partial

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.patching import COMPONENTS, HEADS, PatchingResult
from workbench.figures import display_token, plain
from workbench.figures.axes import TICK_CHARS, keep_labels, shorten

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
        labels, x_title = [str(h) for h in range(width)], "head"
        ticktext = labels
    else:
        pairs = list(zip(result.clean_tokens, result.corrupted_tokens, strict=True))
        labels = [f"{display_token(c)}→{display_token(k)}" if c != k else display_token(c) for c, k in pairs]
        # each token cut on its own (whole in the hover and the data export)
        ticktext = [f"{shorten(display_token(c), TICK_CHARS)}→{shorten(display_token(k), TICK_CHARS)}" if c != k
                    else shorten(display_token(c), TICK_CHARS) for c, k in pairs]
        x_title = "position (clean→corrupted token)"
    for col, scores in enumerate(maps, start=1):
        fig.add_trace(
            go.Heatmap(
                z=scores, x=np.arange(width), y=np.arange(n_layers), colorscale=DIVERGING, zmid=0.0,
                zmin=-limit, zmax=limit, showscale=col == 3, colorbar={"title": {"text": "effect on m"}},
                customdata=np.broadcast_to(np.array(labels, dtype=object), scores.shape),
                hovertemplate="layer %{y}, %{customdata}: %{z:.4f}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(title=x_title if col == 2 else None, tickmode="array", tickvals=list(range(width)),
                         ticktext=ticktext, row=1, col=col)  # one axis title, under the middle panel
    fig.update_yaxes(title="layer", tickmode="array", tickvals=list(range(n_layers)),
                     ticktext=[str(i) for i in range(n_layers)], row=1, col=1)
    fig.update_layout(
        title=f"{COMPONENT_TITLES[component]}: {plain(result.model_name)} "
        f"(LD clean {result.ld_clean:.3f}, corrupted {result.ld_corrupted:.3f})",
        height=max(380, 16 * n_layers + 200), margin={"l": 60, "r": 20, "t": 80, "b": 80},
    )
    return keep_labels(fig, xaxis=labels, xaxis2=labels, xaxis3=labels)


FIGURES = {component: partial(method_heatmaps, component=component) for component in COMPONENTS}
