"""Figures for the attention-sink probes: attention-side heatmaps, hidden-state views, sink levels.

Residual slots are labelled like the logit lens: "embed" for the block-0 input, then the
index of the block whose output the slot is.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.attention_sinks import KIND_NONE, SinkProbeResult
from workbench.analyses.sink_levels import SinkLevelsResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token


def slot_labels(n_layers: int) -> list[str]:
    return ["embed"] + [str(i) for i in range(n_layers)]


def first_label(result: SinkProbeResult | SinkLevelsResult) -> str:
    return "BOS" if result.first_is_bos else "first token (no BOS: it plays the BOS role)"


def _token_axis(tokens) -> dict:
    return {
        "title": "token (key position)",
        "tickmode": "array",
        "tickvals": list(range(len(tokens))),
        "ticktext": [f"{display_token(t)}" for t in tokens],
    }


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
            hovertemplate="layer %{y}, key %{x}: %{z:.2f} of heads<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Fraction of heads with sink score > {result.eps:g} (Gu et al.): {result.model_name}",
        xaxis=_token_axis(result.tokens),
        yaxis=_int_axis("layer (block)", [str(i) for i in range(n_layers)]),
        height=max(380, 18 * n_layers + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return fig


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
            customdata=result.resid_norms,
            colorscale=SEQUENTIAL,
            colorbar={"title": {"text": "log10 ‖h‖"}},
            hovertemplate="slot %{y}, token %{x}: ‖h‖ = %{customdata:.1f}<extra></extra>",
        )
    )
    _mark_window(fig, result)
    fig.update_layout(
        title="Hidden-state norm per layer (dashed: BOS sink window)",
        xaxis=_token_axis(result.tokens),
        yaxis=_int_axis("residual after block", slot_labels(slots - 1)),
        height=max(400, 16 * slots + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return fig


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
            customdata=result.cos_to_first,
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "|cos|"}},
            hovertemplate="slot %{y}, token %{x}: cos = %{customdata:.3f}<extra></extra>",
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
    return fig


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
        title=f"Norm of the {first_label(result)} per layer",
        xaxis=_int_axis("residual after block", slot_labels(slots - 1)),
        yaxis={"title": "‖h‖", "type": "log"},
        height=360,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
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


def onset_histogram(levels: SinkLevelsResult) -> go.Figure:
    """How many secondary sinks appear after each block, over the prompt set (the sink levels)."""
    slots = len(levels.onset_counts)
    fig = go.Figure(
        go.Bar(x=np.arange(slots), y=levels.onset_counts, marker={"color": LINE_COLORS[0]},
               hovertemplate="after slot %{x}: %{y} sinks<extra></extra>")
    )
    n_prompts = len(levels.prompt_secondary_count)
    fig.update_layout(
        title=(f"Secondary-sink onsets over {n_prompts} prompts: {levels.share_with_secondary:.0%} of prompts "
               f"have one ({levels.model_name})"),
        xaxis=_int_axis("residual after block (onset)", slot_labels(slots - 1)),
        yaxis={"title": "secondary sinks"},
        height=360,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return fig


def lifetime_scatter(levels: SinkLevelsResult) -> go.Figure:
    """Each sink token (any kind but the first position): onset slot vs lifetime, coloured by its
    creating MLP's alignment with the sink direction."""
    hover = [
        f"prompt {p}, position {pos}: {display_token(t)} ({k})<br>"
        f"creating MLP: block {c}, cos {a:.2f}, ‖write‖ {n:.1f}"
        for p, pos, t, k, c, a, n in zip(
            levels.sink_prompt, levels.sink_position, levels.sink_token, levels.sink_kind, levels.sink_creator,
            levels.sink_alignment, levels.sink_mlp_norm, strict=True,
        )
    ]
    fig = go.Figure(
        go.Scatter(
            x=levels.sink_onset, y=levels.sink_lifetime, mode="markers", customdata=hover,
            marker={"color": levels.sink_alignment, "colorscale": SEQUENTIAL, "cmin": -1.0, "cmax": 1.0,
                    "colorbar": {"title": {"text": "MLP cos"}}, "size": 9},
            hovertemplate="%{customdata}<extra></extra>",
        )
    )
    slots = len(levels.onset_counts)
    fig.update_layout(
        title="Sink tokens (all kinds): onset vs lifetime",
        xaxis=_int_axis("residual after block (onset)", slot_labels(slots - 1)),
        yaxis={"title": "lifetime (layers)"},
        height=360,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return fig
