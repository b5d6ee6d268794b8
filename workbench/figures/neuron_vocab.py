"""Figure of one neuron's vocabulary projection: the tokens W_U . w_out and W_U . w_in favour most."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.neuron_vocab import NeuronVocabResult
from workbench.figures import LINE_COLORS, display_token
from workbench.figures.axes import keep_labels, token_ticks


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
        fig.update_yaxes(tickmode="array", tickvals=list(range(k)), ticktext=token_ticks(tokens),
                         autorange="reversed", row=1, col=col)
        keep_labels(fig, **{f"yaxis{col if col > 1 else ''}": [display_token(t) for t in tokens]})
    fig.update_layout(
        title=f"Layer {result.layer}, neuron {result.neuron}: {result.class_name}",
        height=max(300, 24 * k + 120), showlegend=False, margin={"l": 60, "r": 20, "t": 70, "b": 40},
    )
    return fig


FIGURES = {"vocab_projection": vocab_projection}
