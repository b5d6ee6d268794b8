"""Figure of one neuron scaled: the next-token distribution before and after."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.neuron_effect import NeuronEffectResult
from workbench.figures import LINE_COLORS, display_token
from workbench.figures.axes import keep_labels, token_ticks


def effect(result: NeuronEffectResult) -> go.Figure:
    """Probabilities of the clean run's top tokens, clean vs with the neuron scaled."""
    k = len(result.clean_top_tokens)
    labels = [display_token(t) for t in result.clean_top_tokens]
    hover = {"customdata": labels, "hovertemplate": "%{customdata}: %{y:.3f}"}
    fig = go.Figure([
        go.Bar(x=np.arange(k), y=result.clean_top_probs, name="clean", marker={"color": LINE_COLORS[0]}, **hover),
        go.Bar(x=np.arange(k), y=result.clean_top_scaled_probs, name=f"neuron × {result.factor:g}",
               marker={"color": LINE_COLORS[1]}, **hover),
    ])
    fig.update_layout(
        barmode="group",
        title=f"Next-token probabilities, layer {result.layer} neuron {result.neuron} × {result.factor:g} "
              f"(KL = {result.kl:.4f} nats)",
        xaxis={"title": "clean top tokens", "tickmode": "array", "tickvals": list(range(k)),
               "ticktext": token_ticks(result.clean_top_tokens)},
        yaxis={"title": "probability"}, height=360, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return keep_labels(fig, xaxis=labels)


FIGURES = {"effect": effect}
