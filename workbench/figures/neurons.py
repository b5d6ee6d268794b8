"""Figures for the neuron analyses: class fractions per layer, cosine distributions with the
null band, a neuron's vocabulary projection, and the effect of scaling it."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.neuron_effect import NeuronEffectResult
from workbench.analyses.neuron_vocab import NeuronVocabResult
from workbench.analyses.neurons import CLASS_NAMES, NeuronClassResult
from workbench.figures import LINE_COLORS, display_token

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
    fig.update_layout(
        barmode="stack",
        title=f"Neuron classes per layer: {result.model_name}{folded}",
        xaxis=_layer_axis(result.n_layers),
        yaxis={"title": "share of the layer's neurons", "range": [0, 1] if include_orthogonal else None},
        height=430, legend={"traceorder": "normal"}, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig


def cosine_distribution(result: NeuronClassResult) -> go.Figure:
    """cos(w_in, w_out) of every neuron, one box per layer, over the null band of random cosines."""
    fig = go.Figure()
    lo, hi = result.null_band
    fig.add_hrect(y0=lo, y1=hi, fillcolor="#999999", opacity=0.25, line_width=0,
                  annotation_text=f"{result.null_coverage:.0%} null band (d={result.d_model})",
                  annotation_position="top left")
    for threshold in (-0.5, 0.5):
        fig.add_hline(y=threshold, line_dash="dot", line_color=LINE_COLORS[1])
    n_layers, n_neurons = result.cos_in_out.shape
    fig.add_trace(go.Box(
        x=np.repeat(np.arange(n_layers), n_neurons), y=result.cos_in_out.reshape(-1),
        boxpoints="outliers", marker={"color": LINE_COLORS[0], "size": 3}, line={"color": LINE_COLORS[0]},
        name="cos(w_in, w_out)",
    ))
    fig.update_layout(
        title="cos(w_in, w_out) per layer (sign-normalised); dotted: the ±0.5 class thresholds",
        xaxis=_layer_axis(n_layers), yaxis={"title": "cosine", "range": [-1, 1]},
        height=380, showlegend=False, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig


def vocab_projection(result: NeuronVocabResult) -> go.Figure:
    """Top and bottom tokens of W_U · w_out and W_U · w_in as horizontal bars."""
    panels = [
        ("W_U·w_out: promoted", result.out_top_tokens, result.out_top_values, LINE_COLORS[0]),
        ("W_U·w_out: suppressed", result.out_bottom_tokens, result.out_bottom_values, LINE_COLORS[1]),
        ("W_U·w_in: top", result.in_top_tokens, result.in_top_values, LINE_COLORS[2]),
        ("W_U·w_in: bottom", result.in_bottom_tokens, result.in_bottom_values, LINE_COLORS[3]),
    ]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.08)
    k = len(result.out_top_tokens)
    for col, (title, tokens, values, color) in enumerate(panels, start=1):
        fig.add_trace(go.Bar(
            x=values, y=np.arange(k), orientation="h", marker={"color": color}, name=title,
            customdata=[display_token(t) for t in tokens], hovertemplate="%{customdata}: %{x:.3f}<extra></extra>",
        ), row=1, col=col)
        fig.update_yaxes(tickmode="array", tickvals=list(range(k)), ticktext=[display_token(t) for t in tokens],
                         autorange="reversed", row=1, col=col)
    fig.update_layout(
        title=f"Layer {result.layer}, neuron {result.neuron}: {result.class_name}",
        height=max(300, 24 * k + 120), showlegend=False, margin={"l": 60, "r": 20, "t": 70, "b": 40},
    )
    return fig


def effect(result: NeuronEffectResult) -> go.Figure:
    """Probabilities of the clean run's top tokens, clean vs with the neuron scaled."""
    k = len(result.clean_top_tokens)
    labels = [display_token(t) for t in result.clean_top_tokens]
    fig = go.Figure([
        go.Bar(x=np.arange(k), y=result.clean_top_probs, name="clean", marker={"color": LINE_COLORS[0]}),
        go.Bar(x=np.arange(k), y=result.clean_top_scaled_probs, name=f"neuron × {result.factor:g}",
               marker={"color": LINE_COLORS[1]}),
    ])
    fig.update_layout(
        barmode="group",
        title=f"Next-token probabilities, layer {result.layer} neuron {result.neuron} × {result.factor:g} "
              f"(KL = {result.kl:.4f} nats)",
        xaxis={"title": "clean top tokens", "tickmode": "array", "tickvals": list(range(k)), "ticktext": labels},
        yaxis={"title": "probability"}, height=360, margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig
