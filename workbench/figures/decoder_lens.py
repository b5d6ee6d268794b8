"""Figures for the DecoderLens: the slots x generated positions table of tokens, and the sequence
log-probability per encoder slot."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.decoder_lens import DecoderLensResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token, plain, say_when_empty
from workbench.figures.axes import CELL_TEXT_PX, cell_chars, keep_labels, shorten

SLOT_AXIS = "encoder slot the decoder reads"


def _slot_axis(result: DecoderLensResult) -> dict:
    rows = len(result.slots)
    return {"title": SLOT_AXIS, "tickmode": "array", "tickvals": list(range(rows)),
            "ticktext": [str(label) for label in result.slot_labels]}


def table(result: DecoderLensResult) -> go.Figure:
    """Each slot's generated tokens in one row (cells after its end left empty), coloured by the chosen
    token's probability; the hover gives the token, its probability and the row's whole text."""
    rows, steps = result.token_ids.shape
    width = cell_chars(steps)
    shown = np.empty((rows, steps), dtype=object)
    hover = np.empty((rows, steps), dtype=object)
    for row in range(rows):
        summary = (f"encoder slot {result.slot_labels[row]}: {plain(result.texts[row])!s}"
                   f"<br>sequence log p = {result.logprob[row]:.3f} nats"
                   f"{'' if result.finished[row] else ' (stopped at the token limit)'}")
        for step in range(steps):
            inside = step < result.lengths[row]
            token = display_token(result.tokens[row, step]) if inside else ""
            shown[row, step] = shorten(token, width) if inside else ""
            hover[row, step] = (f"token {step + 1}: {token!s}  p = {result.probs[row, step]:.3f}<br>{summary}"
                                if inside else summary)
    fig = go.Figure(
        go.Heatmap(
            z=result.probs, x=np.arange(steps), y=np.arange(rows), text=shown, texttemplate="%{text}",
            textfont={"size": CELL_TEXT_PX}, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
            colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0, colorbar={"title": {"text": "token prob"}},
        )
    )
    fig.update_layout(
        title=f"DecoderLens: {plain(result.model_name)} (greedy decoding from each encoder layer)",
        xaxis={"title": "generated token", "tickmode": "array", "tickvals": list(range(steps)),
               "ticktext": [str(step + 1) for step in range(steps)]},
        yaxis=_slot_axis(result),
        height=max(360, 26 * rows + 160),
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    return keep_labels(fig, xaxis=[str(step + 1) for step in range(steps)], yaxis=result.slot_labels)


def sequence_logprob(result: DecoderLensResult) -> go.Figure:
    """Per encoder slot, the log-probability of the sequence the decoder generated from it."""
    rows = len(result.slots)
    fig = go.Figure()
    if rows:
        fig.add_trace(go.Scatter(
            x=np.arange(rows), y=result.logprob, mode="lines+markers", line={"color": LINE_COLORS[0]},
            name="sequence log p", customdata=[plain(text) for text in result.texts],
            hovertemplate="log p = %{y:.3f} nats<br>%{customdata}<extra></extra>",
        ))
    fig.update_layout(
        title=f"DecoderLens sequence log-probability: {plain(result.model_name)}",
        xaxis=_slot_axis(result), yaxis={"title": "log p of the generated sequence (nats)"},
        height=360, margin={"l": 70, "r": 20, "t": 60, "b": 60},
    )
    keep_labels(fig, xaxis=result.slot_labels)
    return say_when_empty(fig, "No encoder slot was decoded.")


FIGURES = {"table": table, "sequence_logprob": sequence_logprob}
