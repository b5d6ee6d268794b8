"""Figures for depth use: sublayer contributions per layer and the effect of skipping each block."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.depth_use import DepthUseResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, plain
from workbench.figures.axes import KL_FLOOR, floored, log_axis


def _line(x, y, name: str, color: str, dash: str | None = None) -> go.Scatter:
    return go.Scatter(x=x, y=y, name=name, mode="lines+markers", line={"color": color, "dash": dash})


def contributions(result: DepthUseResult) -> go.Figure:
    """Relative norm and cosine of the attention and MLP contributions, per block."""
    layers = np.arange(result.n_layers)
    fig = make_subplots(rows=1, cols=2, x_title="block", subplot_titles=(
        "‖contribution‖ / ‖residual‖", "cos(contribution, residual)"))
    fig.add_trace(_line(layers, result.attn_rel_norm, "attention", LINE_COLORS[0]), row=1, col=1)
    fig.add_trace(_line(layers, result.mlp_rel_norm, "MLP", LINE_COLORS[1]), row=1, col=1)
    fig.add_trace(_line(layers, result.attn_cos, "attention", LINE_COLORS[0]), row=1, col=2)
    fig.add_trace(_line(layers, result.mlp_cos, "MLP", LINE_COLORS[1]), row=1, col=2)
    fig.update_traces(showlegend=False, row=1, col=2)
    fig.add_hline(y=0, line={"color": "grey", "width": 1}, row=1, col=2)
    log_axis(fig, np.concatenate([result.attn_rel_norm, result.mlp_rel_norm]), row=1, col=1)
    positions = "all positions" if result.include_first_token else "positions after the first"
    fig.update_layout(title=f"Sublayer contributions: {plain(result.model_name)} (mean over {positions})",
                      height=380, margin={"l": 60, "r": 20, "t": 70, "b": 50})
    return fig


def skip_effects(result: DepthUseResult) -> go.Figure:
    """KL of the output when a block is skipped, and the relative change of every later block output."""
    layers = np.arange(result.n_layers)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], subplot_titles=(
        "KL(original ‖ block skipped)", "relative change of later block outputs"))
    for values, name, color, dash in ((result.skip_kl_last, "last position", LINE_COLORS[2], None),
                                      (result.skip_kl_mean, "mean over positions", LINE_COLORS[3], "dot")):
        y, notes, symbols = floored(values)  # a KL of 0 (or below the floor) stays on the log axis
        trace = _line(layers, y, name, color, dash)
        trace.update(marker={"symbol": symbols}, customdata=notes,
                     hovertemplate=f"skip block %{{x}}: %{{customdata}}<extra>{name}</extra>")
        fig.add_trace(trace, row=1, col=1)
    later = np.triu(np.ones_like(result.skip_resid_change), 1) > 0
    change = np.where(later, result.skip_resid_change, np.nan)
    fig.add_trace(go.Heatmap(  # log colour scale: skipping an early block can change later ones 100x more
        z=np.log10(np.where(later, np.maximum(change, 1e-6), np.nan)), x=layers, y=layers, customdata=change,
        colorscale=SEQUENTIAL, colorbar={"title": {"text": "log10 ‖Δh‖/‖h‖"}},
        hovertemplate="skip block %{y}, block %{x} output: %{customdata:.3f}<extra></extra>",
    ), row=1, col=2)
    log_axis(fig, np.maximum(np.concatenate([result.skip_kl_last, result.skip_kl_mean]), KL_FLOOR),
             title_text="nats", row=1, col=1)
    fig.update_xaxes(title_text="skipped block", row=1, col=1)
    fig.update_xaxes(title_text="later block", row=1, col=2)
    fig.update_yaxes(title_text="skipped block", autorange="reversed", row=1, col=2)
    fig.update_layout(title=f"Skipping one block: output KL and change of later blocks ({plain(result.model_name)})",
                      height=420, legend={"orientation": "h", "y": -0.2},
                      margin={"l": 60, "r": 20, "t": 80, "b": 60})
    return fig


FIGURES = {"contributions": contributions, "skip_effects": skip_effects}
