"""Figures of the sink levels over a prompt set: when secondary sinks appear, and how long they last."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.sink_levels import SinkLevelsResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token, plain, say_when_empty
from workbench.figures.attention_sinks import _int_axis, slot_labels


def onset_histogram(levels: SinkLevelsResult) -> go.Figure:
    """How many secondary sinks appear after each block, over the prompt set (the sink levels)."""
    slots = len(levels.onset_counts)
    fig = go.Figure(go.Bar(x=np.arange(slots), y=levels.onset_counts, marker={"color": LINE_COLORS[0]},
                           hovertemplate="after slot %{x}: %{y} sinks<extra></extra>"))
    n_prompts = len(levels.prompt_secondary_count)
    if levels.onset_counts.sum() == 0:  # all zero: say so, on a count axis from 0 (not plotly's -1..1)
        fig.add_annotation(text=f"No secondary sink in these {n_prompts} prompts.", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_yaxes(range=[0, 1])
    fig.update_layout(
        title=(f"Secondary-sink onsets over {n_prompts} prompts: {levels.share_with_secondary:.0%} of prompts "
               f"have one ({plain(levels.model_name)})"),
        xaxis=_int_axis("residual after block (onset)", slot_labels(slots - 1)),
        yaxis={"title": "secondary sinks", "rangemode": "tozero"},
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
    fig = go.Figure()
    if len(levels.sink_onset):
        fig.add_trace(go.Scatter(
            x=levels.sink_onset, y=levels.sink_lifetime, mode="markers", customdata=hover,
            marker={"color": levels.sink_alignment, "colorscale": SEQUENTIAL, "cmin": -1.0, "cmax": 1.0,
                    "colorbar": {"title": {"text": "MLP cos"}}, "size": 9},
            hovertemplate="%{customdata}<extra></extra>",
        ))
    slots = len(levels.onset_counts)
    fig.update_layout(
        title="Sink tokens (all kinds): onset vs lifetime",
        xaxis=_int_axis("residual after block (onset)", slot_labels(slots - 1)),
        yaxis={"title": "lifetime (layers)"},
        height=360,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return say_when_empty(fig, "No sink token besides the first position in these prompts.")


FIGURES = {"onset_histogram": onset_histogram, "lifetime_scatter": lifetime_scatter}
