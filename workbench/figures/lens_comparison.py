"""Figures for the lens comparison: lenses x layers on the prompt, and per-layer quality on held-out text."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.lens_comparison import LensComparisonResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token, plain
from workbench.figures.axes import CELL_TEXT_PX, KL_FLOOR, floored, keep_labels, log_axis, shorten

COLORS = (*LINE_COLORS, "#E69F00", "#56B4E9")  # Okabe-Ito, colour-blind safe
ROW_PX = 90  # height of one lens row in the grid
CELL_CHARS = 12  # longest token written (upright) in a grid cell, ellipsis included


def _layer_ticks(labels) -> dict:
    step = max(1, len(labels) // 12)
    return {"tickmode": "array", "tickvals": list(range(0, len(labels), step)), "ticktext": list(labels[::step])}


def grid(result: LensComparisonResult) -> go.Figure:
    """Rows are lenses, columns are layers: each lens's top-1 next token at the prompt's last position,
    coloured by its probability; hover shows the top-k and the lens's fitting cost."""
    n_lens, n_slots, k = result.top_tokens.shape
    titles = result.titles()
    text = np.vectorize(display_token, otypes=[object])(result.top_tokens)
    # tokens written upright in their cells: a lens row is tall and a layer column narrow
    cells = np.vectorize(lambda t: shorten(t, CELL_CHARS), otypes=[object])(text[:, :, 0])
    hover = np.empty((n_lens, n_slots), dtype=object)
    for i in range(n_lens):
        for s in range(n_slots):
            ranked = "<br>".join(f"{j + 1}. {text[i, s, j]!s}  {result.top_probs[i, s, j]:.3f}" for j in range(k))
            hover[i, s] = (f"{titles[i]}, layer {result.layer_labels[s]}<br>{ranked}"
                           f"<br>fit: {plain(str(result.fit_note[i]))}")
    fig = go.Figure(go.Heatmap(
        z=result.top_probs[:, :, 0], x=np.arange(n_slots), y=np.arange(n_lens), customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0,
        colorbar={"title": {"text": "top-1 prob"}}))
    for i in range(n_lens):
        for s in range(n_slots):  # dark text on the light (high-probability) end of Viridis
            fig.add_annotation(x=s, y=i, text=str(cells[i, s]), textangle=-90, showarrow=False,
                               font={"size": CELL_TEXT_PX,
                                     "color": "#000000" if result.top_probs[i, s, 0] > 0.6 else "#ffffff"})
    last = display_token(str(result.tokens[-1])) if len(result.tokens) else ""
    fig.update_layout(
        title=f"Every lens on the same states: next token after ‘{last!s}’ (last position), {plain(result.model_name)}",
        xaxis={"title": "layer (residual after block)", **_layer_ticks(list(result.layer_labels))},
        yaxis={"title": "lens", "tickmode": "array", "tickvals": list(range(n_lens)), "ticktext": titles,
               "autorange": "reversed"},
        height=max(320, ROW_PX * n_lens + 170), margin={"l": 120, "r": 20, "t": 60, "b": 60})
    return keep_labels(fig, xaxis=list(result.layer_labels), yaxis=titles)


def held_out(result: LensComparisonResult) -> go.Figure:
    """Per layer and lens on held-out text: KL to the final distribution (log axis, a KL below the floor
    drawn at the floor as an open circle), top-1 agreement with the final prediction, perplexity."""
    titles = result.titles()
    measured = [i for i in range(len(titles)) if not np.isnan(result.kl[i]).all()]
    if not result.eval_tokens or not measured:
        fig = go.Figure()
        fig.add_annotation(text="No held-out tokens evaluated yet." if measured or not result.eval_tokens
                           else "None of these lenses is measured on held-out text.", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(title=f"Lenses on held-out text: {plain(result.model_name)}", height=200,
                          xaxis={"visible": False}, yaxis={"visible": False})
        return fig
    x = np.arange(len(result.layer_labels))
    fig = make_subplots(rows=1, cols=3, x_title="layer (residual after block)", subplot_titles=(
        "KL(final ‖ lens), nats", "top-1 agreement with final", "perplexity of the next token"))
    for n, i in enumerate(measured):
        color = COLORS[n % len(COLORS)]
        for col, values in enumerate((result.kl[i], result.top1[i], result.ppl[i]), start=1):
            marker, hover, y = {}, np.array(result.layer_labels, dtype=object), values
            if col == 1:
                y, notes, symbols = floored(values)
                marker = {"symbol": symbols}
                hover = np.stack([hover, np.array(notes, dtype=object)], axis=-1)
            fig.add_trace(go.Scatter(
                x=x, y=y, name=titles[i], mode="lines+markers", line={"color": color}, showlegend=col == 1,
                marker=marker, customdata=hover, legendgroup=titles[i],
                hovertemplate=("layer %{customdata[0]}: %{customdata[1]}" if col == 1 else
                               "layer %{customdata}: %{y:.3f}") + "<extra>" + titles[i] + "</extra>"), row=1, col=col)
    log_axis(fig, np.maximum(result.kl[measured].ravel(), KL_FLOOR), row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    log_axis(fig, result.ppl[measured].ravel(), row=1, col=3)
    fig.update_xaxes(**_layer_ticks(list(result.layer_labels)))
    skipped = [titles[i] for i in range(len(titles)) if i not in measured]
    note = f"; not measured on held-out text: {', '.join(skipped)}" if skipped else ""
    fig.update_layout(
        title=f"Lenses on held-out text: {plain(result.model_name)}, {result.eval_tokens} tokens{note}",
        height=420, legend={"orientation": "h", "y": -0.25, "x": 0.5, "xanchor": "center"},
        margin={"l": 60, "r": 20, "t": 80, "b": 80})
    labels = list(result.layer_labels)
    return keep_labels(fig, xaxis=labels, xaxis2=labels, xaxis3=labels)


def fitting_cost(result: LensComparisonResult) -> go.Figure:
    """Each lens's fitting cost: wall seconds (bars) and the tokens it was fitted on (hover)."""
    titles = result.titles()
    seconds = np.nan_to_num(result.fit_seconds.astype(np.float64), nan=0.0)
    fig = go.Figure(go.Bar(
        x=titles, y=seconds, marker={"color": [COLORS[i % len(COLORS)] for i in range(len(titles))]},
        customdata=np.stack([result.fit_tokens.astype(object), np.array([plain(str(n)) for n in result.fit_note],
                                                                         dtype=object)], axis=-1),
        hovertemplate="%{x}: %{y:.1f} s, %{customdata[0]} tokens<br>%{customdata[1]}<extra></extra>"))
    fig.update_layout(title=f"Fitting cost per lens: {plain(result.model_name)} (0: nothing to fit; tuned lens: "
                            "training time not recorded)", yaxis_title="seconds (wall clock)", height=320,
                      margin={"l": 60, "r": 20, "t": 60, "b": 60})
    return keep_labels(fig, xaxis=titles)


FIGURES = {"grid": grid, "held_out": held_out, "fitting_cost": fitting_cost}
