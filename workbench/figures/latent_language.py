"""Figures for the latent-language view, in the style of Wendler et al. (2024), Fig. 2, for any set
of candidate languages (Zhong et al. 2025): per layer, the mean lens probability of the concept's
word in each reported language, with 95% bands over prompts. Two quantities, never mixed in one
chart and named in every title and axis: the FIRST-TOKEN probability and the WHOLE-ANSWER
probability (teacher-forced product of the conditionals; see ``workbench.analyses.latent_language``)."""

from __future__ import annotations

from functools import partial

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.latent_language import QUANTITIES, LatentLanguageResult, language_means, languages
from workbench.figures import LINE_COLORS, plain, say_when_empty
from workbench.figures.axes import keep_labels

# Okabe-Ito, colour-blind safe: the four line colours first, then the rest of the cycle
PALETTE = (*LINE_COLORS, "#E69F00", "#56B4E9", "#F0E442", "#000000")
DASHES = ("solid", "dash", "dot", "dashdot")  # a second cue past eight languages
Y_TITLES = {"first": "lens probability of the word's first token",
            "whole": "lens probability of the whole word (teacher-forced)"}


def _hex_to_rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, x: np.ndarray, mean: np.ndarray, half: np.ndarray, name: str, style: int) -> None:
    color, dash = PALETTE[style % len(PALETTE)], DASHES[(style // len(PALETTE)) % len(DASHES)]
    fig.add_trace(go.Scatter(
        x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + half, (mean - half)[::-1]]),
        fill="toself", fillcolor=_hex_to_rgba(color, 0.2), line={"width": 0}, hoverinfo="skip", showlegend=False,
    ))
    fig.add_trace(go.Scatter(x=x, y=mean, name=name, mode="lines+markers", line={"color": color, "dash": dash},
                             hovertemplate=f"{name}, layer %{{x}}: %{{y:.3f}}<extra></extra>"))


def _legend_name(index: int, code: str, counted: int, total: int) -> str:
    name = plain(languages().get(code, code))
    role = " (answer)" if index == 0 else ""
    return f"{name}{role}" + (f" [{counted} of {total}]" if counted != total else "")


def probabilities(result: LatentLanguageResult, quantity: str = "first", only_correct: bool = False) -> go.Figure:
    """One band per reported language: the mean ``quantity`` ("first" or "whole") per layer."""
    means = language_means(result, quantity, only_correct)
    keep = result.final_correct if only_correct else np.ones(len(result.prompts), dtype=bool)
    fig = go.Figure()
    x = np.arange(len(result.layer_labels))
    drawn = 0
    for index in range(len(result.langs)):  # the pivot and candidates first, the answer language on top
        order = (index + 1) % len(result.langs)
        if means.counted[order] == 0:
            continue
        _band(fig, x, means.mean[order], means.half_width[order],
              _legend_name(order, str(result.langs[order]), int(means.counted[order]), int(keep.sum())),
              {0: 1, 1: 0}.get(order, order))  # answer and pivot keep version 2's colours
        drawn += 1
    task = result.task if result.task != "translation" else f"translation {result.source_lang}→{result.target_lang}"
    shown = (f"the {int(keep.sum())} prompts it answers correctly (of {len(result.prompts)})" if only_correct else
             f"all {len(result.prompts)} prompts (model correct on {result.final_correct.mean():.0%})"
             if len(result.prompts) else "no prompts")
    fig.update_layout(
        title=f"Latent language, {QUANTITIES[quantity]}: {plain(result.model_name)}, {task}: {shown}",
        xaxis={"title": "layer", "tickmode": "array", "tickvals": list(x[:: max(1, len(x) // 10)]),
               "ticktext": list(result.layer_labels[:: max(1, len(x) // 10)])},
        yaxis={"title": Y_TITLES[quantity], "range": [0, 1]},
        height=420, legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
        margin={"l": 60, "r": 20, "t": 80, "b": 50},
    )
    if not drawn:
        say_when_empty(fig, "No prompt to average: none answered correctly." if only_correct else "No prompt.")
    return keep_labels(fig, xaxis=list(result.layer_labels))


FIGURES = {
    "first_token": partial(probabilities, quantity="first"),
    "whole_answer": partial(probabilities, quantity="whole"),
    "first_token_correct": partial(probabilities, quantity="first", only_correct=True),
    "whole_answer_correct": partial(probabilities, quantity="whole", only_correct=True),
}
