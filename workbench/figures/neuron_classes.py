"""Figures of the neuron classes: class fractions per block, cosine distributions with the null band."""

from __future__ import annotations

from functools import partial

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.neuron_classes import CLASS_NAMES, NeuronClassResult
from workbench.figures import LINE_COLORS, plain, say_when_empty
from workbench.figures.axes import keep_labels

# Okabe-Ito (colour-blind safe) per typical class; an atypical class shares its typical
# class's colour, hatched.
_CLASS_COLORS = {
    "enrichment": "#0072B2",
    "conditional enrichment": "#56B4E9",
    "depletion": "#D55E00",
    "conditional depletion": "#E69F00",
    "proportional change": "#009E73",
    "orthogonal output": "#BBBBBB",
}


def _class_style(name: str) -> dict:
    base = name.removeprefix("atypical ")
    return {"color": _CLASS_COLORS[base], "pattern": {"shape": "/" if name.startswith("atypical") else ""}}


def _layer_axis(n_layers: int) -> dict:
    step = max(1, n_layers // 15)
    ticks = list(range(0, n_layers, step))
    return {"title": "layer", "tickmode": "array", "tickvals": ticks, "ticktext": [str(t) for t in ticks]}


def class_fractions(result: NeuronClassResult, include_orthogonal: bool = True) -> go.Figure:
    """Stacked bars: the share of each neuron class in every layer."""
    layers = np.arange(result.n_layers)
    fig = go.Figure()
    for index, name in enumerate(CLASS_NAMES):
        if name == "orthogonal output" and not include_orthogonal:
            continue
        share = result.fractions[:, index]
        if not share.any():
            continue
        fig.add_trace(go.Bar(
            x=layers, y=share, name=name, marker=_class_style(name),
            hovertemplate=f"layer %{{x}}<br>{name}: %{{y:.3f}}<extra></extra>",
        ))
    folded = " (preceding norm folded in)" if result.fold_norm else ""
    left_out = "" if include_orthogonal else ", orthogonal output left out"
    fig.update_layout(
        barmode="stack",
        title=f"Neuron classes per layer{left_out}: {plain(result.model_name)}{folded}",
        xaxis=_layer_axis(result.n_layers),
        yaxis={"title": "share of the layer's neurons", "range": [0, 1] if include_orthogonal else None},
        height=430, legend={"traceorder": "normal"}, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    keep_labels(fig, xaxis=[str(i) for i in layers])
    return say_when_empty(fig, "Every neuron is in the orthogonal-output class: nothing else to show.")


def cosine_distribution(result: NeuronClassResult) -> go.Figure:
    """cos(w_in, w_out) of every neuron, one box per layer, over the null band of random cosines."""
    fig = go.Figure()
    lo, hi = result.null_band
    fig.add_hrect(y0=lo, y1=hi, fillcolor="#999999", opacity=0.25, line_width=0)
    # the band's label sits in the plot's top-left corner, clear of the boxes, on a white ground
    fig.add_annotation(text=f"shaded: {result.null_coverage:.0%} null band (d={result.d_model})",
                       xref="x domain", yref="y domain", x=0.01, y=0.99, xanchor="left", yanchor="top",
                       showarrow=False, bgcolor="rgba(255,255,255,0.85)", font={"color": "black"})
    for threshold in (-0.5, 0.5):
        fig.add_hline(y=threshold, line_dash="dot", line_color=LINE_COLORS[1])
    n_layers, n_neurons = result.cos_in_out.shape
    fig.add_trace(go.Box(
        x=np.repeat(np.arange(n_layers), n_neurons), y=result.cos_in_out.reshape(-1),
        boxpoints="outliers", marker={"color": LINE_COLORS[0], "size": 3}, line={"color": LINE_COLORS[0]},
        name="cos(w_in, w_out)",
    ))
    fig.update_layout(
        title="cos(w_in, w_out) per layer (sign-normalised; dotted: ±0.5 class thresholds): "
              f"{plain(result.model_name)}",
        xaxis=_layer_axis(n_layers), yaxis={"title": "cosine", "range": [-1, 1]},
        height=380, showlegend=False, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return keep_labels(fig, xaxis=[str(i) for i in range(n_layers)])


FIGURES = {
    "class_fractions": class_fractions,
    "class_fractions_no_orthogonal": partial(class_fractions, include_orthogonal=False),
    "cosine_distribution": cosine_distribution,
}
