"""Figures for the attention-sink probes: attention-side heatmaps, hidden-state views, sink levels.

Residual slots are labelled like the logit lens: "embed" for the block-0 input, then the
index of the block whose output the slot is.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench import axes
from workbench.analyses.attention_sinks import KIND_NONE, SinkProbeResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token, plain
from workbench.figures.axes import keep_labels, log_axis, token_axis


def slot_labels(n_layers: int) -> list[str]:
    return [str(label) for label in axes.slot_labels(n_layers)]


def first_label(result) -> str:
    return "BOS" if result.first_is_bos else "first token (no BOS: it plays the BOS role)"


def _token_axis(tokens) -> dict:
    """Key positions labelled with their tokens (long ones cut with '…'; the hover and the data
    export give them whole)."""
    return token_axis(tokens, "token (key position)")


def _token_hover(tokens, rows: int) -> np.ndarray:
    """(rows, seq) the full token of each column, for a heatmap's hover."""
    return np.broadcast_to(np.array([display_token(t) for t in tokens], dtype=object), (rows, len(tokens)))


def _cell_hover(values: np.ndarray, tokens, y_labels) -> np.ndarray:
    """(rows, seq, 3) per cell: its value, the full token of its column and the label of its row."""
    rows, seq = values.shape
    out = np.empty((rows, seq, 3), dtype=object)
    out[:, :, 0] = values.astype(np.float64)
    out[:, :, 1] = _token_hover(tokens, rows)
    out[:, :, 2] = np.array(y_labels, dtype=object)[:, None]
    return out


def _with_labels(fig: go.Figure, tokens, y_labels) -> go.Figure:
    return keep_labels(fig, xaxis=[display_token(t) for t in tokens], yaxis=y_labels)


def _int_axis(title: str, labels: list[str]) -> dict:
    return {"title": title, "tickmode": "array", "tickvals": list(range(len(labels))), "ticktext": labels}


def layer_token_heatmap(result: SinkProbeResult) -> go.Figure:
    """Layers x tokens: fraction of the layer's heads whose sink score on the token exceeds eps."""
    n_layers, seq = result.layer_sink_fraction.shape
    fig = go.Figure(
        go.Heatmap(
            z=result.layer_sink_fraction,
            x=np.arange(seq),
            y=np.arange(n_layers),
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "heads sinking"}},
            customdata=_token_hover(result.tokens, n_layers),
            hovertemplate="layer %{y}, key %{x} %{customdata}: %{z:.2f} of heads<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Fraction of heads with sink score > {result.eps:g} (Gu et al.): {plain(result.model_name)}",
        xaxis=_token_axis(result.tokens),
        yaxis=_int_axis("layer (block)", [str(i) for i in range(n_layers)]),
        height=max(380, 18 * n_layers + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return _with_labels(fig, result.tokens, [str(i) for i in range(n_layers)])


def layer_head_heatmap(result: SinkProbeResult, position: int = 0) -> go.Figure:
    """Layers x heads: sink score of one key position (default: the first / BOS)."""
    scores = result.sink_scores[:, :, position]
    n_layers, heads = scores.shape
    fig = go.Figure(
        go.Heatmap(
            z=scores,
            x=np.arange(heads),
            y=np.arange(n_layers),
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "sink score"}},
            hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>",
        )
    )
    who = first_label(result) if position == 0 else f"position {position}"
    fig.update_layout(
        title=f"Sink score on {display_token(result.tokens[position])} ({who}) per head",
        xaxis=_int_axis("head", [str(h) for h in range(heads)]),
        yaxis=_int_axis("layer (block)", [str(i) for i in range(n_layers)]),
        height=max(380, 18 * n_layers + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return fig


def _mark_window(fig: go.Figure, result: SinkProbeResult) -> None:
    for slot, name in ((result.window_start, "window start"), (result.window_end, "window end")):
        fig.add_hline(y=slot, line={"color": "white", "dash": "dash", "width": 1},
                      annotation_text=name, annotation_position="top left")


def norm_heatmap(result: SinkProbeResult) -> go.Figure:
    """Residual slots x tokens: log10 of each hidden state's L2 norm, BOS sink window marked."""
    slots, seq = result.resid_norms.shape
    fig = go.Figure(
        go.Heatmap(
            z=np.log10(np.maximum(result.resid_norms, 1e-12)),
            x=np.arange(seq),
            y=np.arange(slots),
            customdata=_cell_hover(result.resid_norms, result.tokens, slot_labels(slots - 1)),
            colorscale=SEQUENTIAL,
            colorbar={"title": {"text": "log10 ‖h‖"}},
            hovertemplate="after block %{customdata[2]}, token %{x} %{customdata[1]}: "
                          "‖h‖ = %{customdata[0]:.1f}<extra></extra>",
        )
    )
    _mark_window(fig, result)
    fig.update_layout(
        title=f"Hidden-state norm of every token per layer (dashed: BOS sink window): {plain(result.model_name)}",
        xaxis=_token_axis(result.tokens),
        yaxis=_int_axis("residual after block", slot_labels(slots - 1)),
        height=max(400, 16 * slots + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return _with_labels(fig, result.tokens, slot_labels(slots - 1))


def cosine_heatmap(result: SinkProbeResult) -> go.Figure:
    """Residual slots x tokens: |cos(h_t, h_first)|; cells counted as sinks are marked '●'."""
    slots, seq = result.cos_to_first.shape
    marks = np.where(result.is_sink, "●", "")
    fig = go.Figure(
        go.Heatmap(
            z=np.abs(result.cos_to_first),
            x=np.arange(seq),
            y=np.arange(slots),
            text=marks,
            texttemplate="%{text}",
            customdata=_cell_hover(result.cos_to_first, result.tokens, slot_labels(slots - 1)),
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "|cos|"}},
            hovertemplate="after block %{customdata[2]}, token %{x} %{customdata[1]}: "
                          "cos = %{customdata[0]:.3f}<extra></extra>",
        )
    )
    _mark_window(fig, result)
    fig.update_layout(
        title=f"|cos| with the {first_label(result)}; ● = sink (|cos| > {result.cos_threshold:g} in the window)",
        xaxis=_token_axis(result.tokens),
        yaxis=_int_axis("residual after block", slot_labels(slots - 1)),
        height=max(400, 16 * slots + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return _with_labels(fig, result.tokens, slot_labels(slots - 1))


def first_norm_curve(result: SinkProbeResult) -> go.Figure:
    """The first token's norm per slot (log scale) with the jump and drop blocks."""
    slots = result.resid_norms.shape[0]
    fig = go.Figure(
        go.Scatter(
            x=np.arange(slots), y=result.resid_norms[:, 0], mode="lines+markers",
            line={"color": LINE_COLORS[0]}, name=first_label(result),
            hovertemplate="slot %{x}: ‖h‖ = %{y:.1f}<extra></extra>",
        )
    )
    fig.add_vrect(x0=result.window_start - 0.5, x1=result.window_end + 0.5, fillcolor=LINE_COLORS[2],
                  opacity=0.15, line_width=0, annotation_text="BOS sink window")
    fig.update_layout(
        title=f"Hidden-state norm of the {first_label(result)} per layer: {plain(result.model_name)}",
        xaxis=_int_axis("residual after block", slot_labels(slots - 1)),
        yaxis={"title": "‖h‖"},
        height=360,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    log_axis(fig, result.resid_norms[:, 0])
    return fig


def sink_rows(result: SinkProbeResult) -> list[dict]:
    """One row per token that is a sink somewhere in the window (for a table)."""
    rows = []
    for pos in np.flatnonzero(result.kinds != KIND_NONE):
        creator = int(result.creator_block[pos])
        rows.append(
            {
                "position": int(pos),
                "token": display_token(result.tokens[pos]),
                "kind": str(result.kinds[pos]),
                "lifetime": int(result.lifetimes[pos]),
                "onset (after block)": int(result.onset_slot[pos]) - 1 if result.onset_slot[pos] > 0 else None,
                "creating MLP (block)": creator if creator >= 0 else None,
                "MLP cos with sink direction": float(result.mlp_alignment[creator, pos]) if creator >= 0 else None,
                "MLP write L2 norm": float(result.mlp_norm[creator, pos]) if creator >= 0 else None,
                "heads sinking on it": float(result.head_sink_fraction[pos]),
            }
        )
    return rows


FIGURES = {
    "layer_token_heatmap": layer_token_heatmap,
    "layer_head_heatmap": layer_head_heatmap,
    "first_norm_curve": first_norm_curve,
    "cosine_heatmap": cosine_heatmap,
    "norm_heatmap": norm_heatmap,
}
