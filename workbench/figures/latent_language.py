"""Figure for the latent-language view, in the style of Wendler et al. (2024), Fig. 2:
mean lens probability per layer of the answer in the target language and of the same word
in the pivot language, with 95% confidence bands over prompts."""

from __future__ import annotations

from functools import partial

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.latent_language import LatentLanguageResult, languages
from workbench.figures import LINE_COLORS, plain
from workbench.figures.axes import keep_labels


def _hex_to_rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, x: np.ndarray, values: np.ndarray, name: str, color: str) -> None:
    mean = values.mean(0)
    half = 1.96 * values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros_like(mean)
    fig.add_trace(go.Scatter(
        x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + half, (mean - half)[::-1]]),
        fill="toself", fillcolor=_hex_to_rgba(color, 0.2), line={"width": 0}, hoverinfo="skip", showlegend=False,
    ))
    fig.add_trace(go.Scatter(x=x, y=mean, name=name, mode="lines+markers", line={"color": color},
                             hovertemplate=f"{name}, layer %{{x}}: %{{y:.3f}}<extra></extra>"))


def probabilities(result: LatentLanguageResult, only_correct: bool = False) -> go.Figure:
    names = languages()
    keep = result.final_correct if only_correct else np.ones(len(result.prompts), dtype=bool)
    fig = go.Figure()
    x = np.arange(len(result.layer_labels))
    if keep.any():
        _band(fig, x, result.p_pivot[keep], names[result.pivot_lang], LINE_COLORS[0])
        _band(fig, x, result.p_answer[keep], names[result.target_lang], LINE_COLORS[1])
    task = result.task if result.task != "translation" else f"translation {result.source_lang}→{result.target_lang}"
    shown = (f"the {int(keep.sum())} prompts it answers correctly (of {len(result.prompts)})" if only_correct else
             f"all {len(result.prompts)} prompts (model correct on {result.final_correct.mean():.0%})")
    fig.update_layout(
        title=f"Latent language: {plain(result.model_name)}, {task}: {shown}",
        xaxis={"title": "layer", "tickmode": "array", "tickvals": list(x[:: max(1, len(x) // 10)]),
               "ticktext": list(result.layer_labels[:: max(1, len(x) // 10)])},
        yaxis={"title": "logit-lens probability", "range": [0, 1]},
        height=420, legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
        margin={"l": 60, "r": 20, "t": 80, "b": 50},
    )
    return keep_labels(fig, xaxis=list(result.layer_labels))


FIGURES = {"probabilities": probabilities, "probabilities_correct": partial(probabilities, only_correct=True)}
