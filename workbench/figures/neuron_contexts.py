"""Figure of the neuron contexts: how strongly each block's neurons fire on their best corpus context."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.neuron_contexts import NeuronContextsResult
from workbench.figures import LINE_COLORS, plain

PERCENTILES = (50, 90, 99)


def peak_activations(result: NeuronContextsResult) -> go.Figure:
    """Per block, percentiles over its neurons of each neuron's strongest |activation| on the corpus."""
    peak = np.abs(result.top_values[:, :, 0]).astype(np.float64)  # (block, neuron): the top context's magnitude
    blocks = np.arange(peak.shape[0])
    fig = go.Figure()
    for color, q in zip(LINE_COLORS, PERCENTILES, strict=False):
        fig.add_trace(go.Scatter(x=blocks, y=np.percentile(peak, q, axis=1), mode="lines+markers", name=f"p{q}",
                                 line={"color": color}))
    fig.update_layout(
        title=f"Strongest corpus activation per neuron: {plain(result.model_name)}",
        xaxis={"title": "block", "tickmode": "array", "tickvals": list(blocks)},
        yaxis={"title": "|activation| of the top context", "rangemode": "tozero"},
        legend={"title": {"text": "over neurons"}},
    )
    return fig


FIGURES = {"peak_activations": peak_activations}
