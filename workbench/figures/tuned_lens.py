"""Figures for the learned lenses (tuned lens, linear shortcut): the tuned lens's training loss, and the
logit lens against the learned lens on held-out text and on one token's trajectory."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.tuned_lens import LensComparisonResult
from workbench.figures import LINE_COLORS, display_token, plain
from workbench.figures.axes import KL_FLOOR, floored, keep_labels, log_axis
from workbench.lens_training import TrainingStatus

LOGIT, TUNED = LINE_COLORS[0], LINE_COLORS[1]


def _layer_ticks(result: LensComparisonResult) -> dict:
    step = max(1, len(result.layer_labels) // 10)
    return {"tickmode": "array", "tickvals": list(range(0, len(result.layer_labels), step)),
            "ticktext": list(result.layer_labels[::step])}


def loss_curve(status: TrainingStatus) -> go.Figure:
    """The tuned lens's training loss per step (markers too, so a single step already shows)."""
    steps = np.arange(1, len(status.losses) + 1)
    fig = go.Figure(go.Scatter(x=steps, y=status.losses, mode="lines+markers", line={"color": TUNED},
                               marker={"size": 4}, name="loss"))
    if not len(steps):
        fig.add_annotation(text="No training step yet: start training to see the loss.", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(title="Tuned-lens training loss: Σ over layers of KL(final ‖ tuned), nats", height=280,
                      xaxis_title="step", yaxis={"title": "nats"},
                      margin={"l": 60, "r": 20, "t": 50, "b": 40})
    log_axis(fig, status.losses)
    return fig


def held_out(result: LensComparisonResult) -> go.Figure:
    """Per layer on held-out text: KL to the final distribution (log axis; a KL below ``KL_FLOOR``,
    such as the last layer's 0, is drawn at the floor as an open circle), top-1 agreement, perplexity.
    A partial result with no held-out tokens yet says so instead of drawing NaN lines."""
    if not result.eval_tokens:
        fig = go.Figure()
        fig.add_annotation(text="No held-out tokens evaluated yet.", showarrow=False, xref="paper", yref="paper",
                           x=0.5, y=0.5)
        fig.update_layout(title=f"Logit lens vs {result.lens_name} on held-out text: {plain(result.model_name)}",
                          height=200, xaxis={"visible": False}, yaxis={"visible": False})
        return fig
    x = np.arange(len(result.layer_labels))
    fig = make_subplots(rows=1, cols=3, x_title="layer (residual after block)", subplot_titles=(
        "KL(final ‖ lens), nats", "top-1 agreement with final", "perplexity of the next token"))
    panels = [(result.kl_logit, result.kl_tuned), (result.top1_logit, result.top1_tuned),
              (result.ppl_logit, result.ppl_tuned)]
    for col, pair in enumerate(panels, start=1):
        for name, y, color in zip(("logit lens", result.lens_name), pair, (LOGIT, TUNED), strict=True):
            marker, hover = {}, np.array(result.layer_labels, dtype=object)
            if col == 1:
                y, notes, symbols = floored(y)
                marker = {"symbol": symbols}
                hover = np.stack([hover, np.array(notes, dtype=object)], axis=-1)
            fig.add_trace(go.Scatter(
                x=x, y=y, name=name, mode="lines+markers", line={"color": color}, showlegend=col == 1,
                marker=marker, customdata=hover,
                hovertemplate=("layer %{customdata[0]}: %{customdata[1]}" if col == 1 else
                               "layer %{customdata}: %{y:.3f}") + "<extra>" + name + "</extra>",
            ), row=1, col=col)
    log_axis(fig, np.maximum(np.concatenate([result.kl_logit, result.kl_tuned]), KL_FLOOR), row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    log_axis(fig, np.concatenate([result.ppl_logit, result.ppl_tuned]), row=1, col=3)
    fig.update_xaxes(**_layer_ticks(result))
    how = "fitted in closed form" if result.lens_name == "linear shortcut" else f"trained {result.lens_step} steps"
    fig.update_layout(
        title=f"Logit lens vs {result.lens_name} on held-out text: {plain(result.model_name)}, {result.eval_tokens} "
              f"held-out tokens, lens {how}",
        height=400, legend={"orientation": "h", "y": -0.25, "x": 0.5, "xanchor": "center"},
        margin={"l": 60, "r": 20, "t": 80, "b": 80})
    labels = list(result.layer_labels)
    return keep_labels(fig, xaxis=labels, xaxis2=labels, xaxis3=labels)


def trajectory(result: LensComparisonResult) -> go.Figure:
    """The target token's probability at the prompt's last position, layer by layer, under both lenses;
    hover shows each lens's top-1 token."""
    x = np.arange(len(result.layer_labels))
    fig = go.Figure()
    tops = {"logit lens": result.top_logit, result.lens_name: result.top_tuned}
    probs = {"logit lens": result.prob_logit, result.lens_name: result.prob_tuned}
    for name, color in (("logit lens", LOGIT), (result.lens_name, TUNED)):
        y = probs[name] if result.target_token else np.zeros(len(x))
        fig.add_trace(go.Scatter(
            x=x, y=y, name=name, mode="lines+markers", line={"color": color},
            customdata=np.stack([result.layer_labels, [display_token(t) for t in tops[name]]], axis=-1),
            hovertemplate="layer %{customdata[0]}: p=%{y:.3f}, top-1 %{customdata[1]}<extra>" + name + "</extra>",
        ))
    target = display_token(result.target_token) if result.target_token else "(no target: top-1 in hover)"
    fig.update_xaxes(title_text="layer (residual after block)", **_layer_ticks(result))
    fig.update_layout(title=f"Logit lens vs {result.lens_name}: probability of {target} at the last position, "
                            f"per layer ({plain(result.model_name)})", height=340,
                      yaxis={"title": "probability", "range": [0, 1.02]},
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return keep_labels(fig, xaxis=list(result.layer_labels))


FIGURES = {"held_out": held_out, "trajectory": trajectory}
