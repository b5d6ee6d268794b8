"""Figures for the logit lens: the layers x positions heatmap and the per-layer curves."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.logit_lens import LogitLensResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token, plain
from workbench.figures.axes import CELL_TEXT_PX, cell_chars, keep_labels, log_axis, shorten, token_axis


def cell_labels(result: LogitLensResult) -> np.ndarray:
    """(slot, seq) str: the top-1 token of each cell as drawn in it, cut with '…' to the cell's width
    (the hover gives it whole)."""
    width = cell_chars(result.top_tokens.shape[1])
    return np.vectorize(lambda t: shorten(display_token(t), width), otypes=[object])(result.top_tokens[:, :, 0])


def heatmap(result: LogitLensResult) -> go.Figure:
    """Top-1 token of every (slot, position), coloured by its probability; hover shows top-k."""
    n_rows, seq, k = result.top_ids.shape
    top_text = np.vectorize(display_token, otypes=[object])(result.top_tokens)
    hover = np.empty((n_rows, seq), dtype=object)
    for row in range(n_rows):
        for pos in range(seq):
            ranked = "<br>".join(
                f"{i + 1}. {top_text[row, pos, i]!s}  {result.top_probs[row, pos, i]:.3f}" for i in range(k)
            )
            hover[row, pos] = (
                f"layer {result.layer_labels[row]}, input {display_token(result.tokens[pos])!s} (pos {pos})"
                f"<br>KL to final: {result.kl_to_final[row, pos]:.3f} nats<br>{ranked}"
            )
    fig = go.Figure(
        go.Heatmap(
            z=result.top_probs[:, :, 0],
            x=np.arange(seq),
            y=np.arange(n_rows),
            text=cell_labels(result),
            texttemplate="%{text}",
            textfont={"size": CELL_TEXT_PX},
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "top-1 prob"}},
        )
    )
    fig.update_layout(
        title=f"Logit lens: {plain(result.model_name)}",
        xaxis=token_axis(result.tokens, "input token"),
        yaxis={
            "title": "layer (residual after block)",
            "tickmode": "array",
            "tickvals": list(range(n_rows)),
            "ticktext": list(result.layer_labels),
        },
        height=max(420, 22 * n_rows + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return keep_labels(fig, xaxis=[display_token(t) for t in result.tokens], yaxis=result.layer_labels)


def layer_curves(result: LogitLensResult) -> go.Figure:
    """Per-layer KL(final || layer) at the last position and, if asked, the target's rank (log axis,
    labelled at decades)."""
    has_target = bool(result.target_token)
    target = display_token(result.target_token)
    fig = make_subplots(
        rows=1,
        cols=2 if has_target else 1,
        subplot_titles=(
            ["KL(final ‖ layer) at the last position"]
            + ([f"rank of {target!s} at the last position"] if has_target else [])
        ),
    )
    layers = np.arange(len(result.layer_labels))
    fig.add_trace(
        go.Scatter(
            x=layers, y=result.kl_to_final[:, -1], mode="lines+markers", name="KL (nats)",
            line={"color": LINE_COLORS[0]},
            customdata=result.layer_labels, hovertemplate="layer %{customdata}: %{y:.3f} nats<extra></extra>",
        ),
        row=1, col=1,
    )
    if has_target:
        fig.add_trace(
            go.Scatter(
                x=layers, y=result.target_rank, mode="lines+markers", name="target rank",
                line={"color": LINE_COLORS[1]},
                customdata=np.stack([result.layer_labels, result.target_prob.astype(str)], axis=-1),
                hovertemplate="layer %{customdata[0]}: rank %{y}, p=%{customdata[1]}<extra></extra>",
            ),
            row=1, col=2,
        )
        log_axis(fig, result.target_rank, reverse=True, title_text="rank (1 = top)", row=1, col=2)
    step = max(1, len(layers) // 10)
    fig.update_xaxes(title_text="layer", tickmode="array", tickvals=list(layers[::step]),
                     ticktext=list(result.layer_labels[::step]))
    fig.update_yaxes(title_text="nats", rangemode="tozero", row=1, col=1)
    what = "KL to the final output" + (f" and rank of {target}" if has_target else "")
    fig.update_layout(title=f"Logit lens per layer, last position: {what} ({plain(result.model_name)})",
                      height=360, showlegend=False, margin={"l": 60, "r": 20, "t": 70, "b": 50})
    labels = list(result.layer_labels)
    return keep_labels(fig, xaxis=labels, **({"xaxis2": labels} if has_target else {}))


FIGURES = {"heatmap": heatmap, "layer_curves": layer_curves}
