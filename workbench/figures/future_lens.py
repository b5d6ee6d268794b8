"""Figures of the future lens (Pal et al. 2023): held-out accuracy and NLL of the token t + N per slot,
one panel per horizon N, for the logit lens and the two linear predictors, with the per-horizon
references ("copy the model's next-token prediction", the model's own accuracy) as dashed lines;
and the prompt's last-position predictions as a slots x (method, horizon) grid of top tokens."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.future_lens import FutureLensResult
from workbench.figures import LINE_COLORS, SEQUENTIAL, display_token, plain
from workbench.figures.axes import CELL_TEXT_PX, keep_labels, log_axis, shorten

COPY_COLOR, MODEL_COLOR = "#777777", LINE_COLORS[3]
CELL_CHARS = 9  # display width of a token in a grid cell (the hover gives it whole)


def _ticks(result: FutureLensResult) -> dict:
    step = max(1, len(result.layer_labels) // 10)
    return {"tickmode": "array", "tickvals": list(range(0, len(result.layer_labels), step)),
            "ticktext": list(result.layer_labels[::step])}


def _waiting(result: FutureLensResult, title: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text="No held-out scores yet: the first slot is still being fitted.", showarrow=False,
                       xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(title=title, height=200, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _panels(result: FutureLensResult, rows: list[tuple[str, np.ndarray]], title: str, references: bool) -> go.Figure:
    """One column per horizon, one row per (label, (method, horizon, slot) values); lines per method."""
    x = np.arange(len(result.layer_labels))
    horizons = [int(n) for n in result.horizons]
    fig = make_subplots(rows=len(rows), cols=len(horizons), shared_yaxes=True, x_title="layer (residual after block)",
                        subplot_titles=[f"token t+{n}" for n in horizons] + [""] * (len(rows) - 1) * len(horizons),
                        vertical_spacing=0.12)
    labels = np.array(result.layer_labels, dtype=object)
    for r, (label, values) in enumerate(rows, start=1):
        for c, n in enumerate(horizons, start=1):
            for m, method in enumerate(result.methods):
                fig.add_trace(go.Scatter(
                    x=x, y=values[m, c - 1], name=str(method), mode="lines+markers", marker={"size": 4},
                    line={"color": LINE_COLORS[m % len(LINE_COLORS)]}, showlegend=r == 1 and c == 1,
                    legendgroup=str(method), customdata=labels,
                    hovertemplate=f"layer %{{customdata}}, token t+{n}: %{{y:.3f}}<extra>{method}</extra>",
                ), row=r, col=c)
            if references and r == 1:  # both are top-1 numbers
                for name, value, color in (("copy the model's next-token top-1", result.copy_top1[c - 1], COPY_COLOR),
                                           ("the model's own top-1 (full context)", result.model_top1[c - 1],
                                            MODEL_COLOR)):
                    fig.add_trace(go.Scatter(
                        x=[x[0], x[-1]], y=[value, value], name=name, mode="lines", legendgroup=name,
                        line={"color": color, "dash": "dash", "width": 1}, showlegend=r == 1 and c == 1,
                        hovertemplate=f"{name}, token t+{n}: %{{y:.3f}}<extra></extra>",
                    ), row=r, col=c)
        fig.update_yaxes(title_text=label, row=r, col=1)
    fig.update_xaxes(**_ticks(result))
    single = len(rows) == 1  # one row of panels: the legend goes further down, below the axis title
    fig.update_layout(title=title, height=330 + 240 * (len(rows) - 1),
                      legend={"orientation": "h", "y": -0.42 if single else -0.18, "x": 0.5, "xanchor": "center"},
                      margin={"l": 70, "r": 20, "t": 80, "b": 120 if single else 90})
    names = [f"xaxis{i if i > 1 else ''}" for i in range(1, len(rows) * len(horizons) + 1)]
    return keep_labels(fig, **{name: list(result.layer_labels) for name in names})


def _progress_note(result: FutureLensResult) -> str:
    n = len(result.layer_labels)
    return "" if result.slots_done >= n else f" (slots scored so far: {result.slots_done} of {n})"


def accuracy(result: FutureLensResult) -> go.Figure:
    """Top-1 and top-5 accuracy of the true token t + N per slot, one panel per horizon."""
    title = (f"Future lens: held-out accuracy of token t+N from h_l(t), {plain(result.model_name)}, "
             f"{result.eval_tokens} held-out positions{_progress_note(result)}")
    if not result.eval_tokens:
        return _waiting(result, title)
    fig = _panels(result, [("top-1 accuracy", result.top1), ("top-5 accuracy", result.top5)], title, references=True)
    fig.update_yaxes(rangemode="tozero")
    return fig


def nll(result: FutureLensResult) -> go.Figure:
    """Mean negative log-likelihood of the true token t + N per slot (log axis), one panel per horizon."""
    title = (f"Future lens: held-out NLL of token t+N from h_l(t), nats, {plain(result.model_name)}"
             f"{_progress_note(result)}")
    if not result.eval_tokens:
        return _waiting(result, title)
    fig = _panels(result, [("mean NLL, nats", result.nll)], title, references=False)
    finite = result.nll[np.isfinite(result.nll)]
    for c in range(1, len(result.horizons) + 1):
        log_axis(fig, finite if finite.size else np.ones(1), row=1, col=c)
    return fig


def predictions(result: FutureLensResult) -> go.Figure:
    """The prompt's last position: per slot, the top token each predictor gives for t+1, t+2, t+3,
    coloured by its probability; hover shows the top-k."""
    columns = [(0, 0, "logit lens")] + [(m, i, f"{'(a)' if m == 1 else '(b)'} t+{int(n)}")
                                        for i, n in enumerate(result.horizons) for m in (1, 2)]
    n_slots, k = len(result.layer_labels), result.pred_tokens.shape[-1]
    z = np.full((n_slots, len(columns)), np.nan)
    text = np.empty((n_slots, len(columns)), dtype=object)
    hover = np.empty((n_slots, len(columns)), dtype=object)
    for col, (m, i, label) in enumerate(columns):
        for slot in range(n_slots):
            tokens = [display_token(t) for t in result.pred_tokens[m, i, slot]]
            probs = result.pred_probs[m, i, slot]
            z[slot, col] = probs[0]
            text[slot, col] = shorten(tokens[0], CELL_CHARS) if np.isfinite(probs[0]) else ""  # "": not scored yet
            ranked = "<br>".join(f"{j + 1}. {tokens[j]}  {probs[j]:.3f}" for j in range(k))
            hover[slot, col] = f"layer {result.layer_labels[slot]}, {label}<br>{ranked}"
    last = display_token(result.tokens[-1]) if len(result.tokens) else ""
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(len(columns)), y=np.arange(n_slots), text=text, texttemplate="%{text}",
        textfont={"size": CELL_TEXT_PX}, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
        colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0, colorbar={"title": {"text": "top-1 prob"}}))
    labels = [label for _, _, label in columns]
    fig.update_layout(
        title=f"Future lens on the prompt's last token {last}: predicted tokens t+1..t+3 per layer "
              f"({plain(result.model_name)})",
        xaxis={"title": "predictor and token", "tickmode": "array", "tickvals": list(range(len(columns))),
               "ticktext": labels},
        yaxis={"title": "layer (residual after block)", "tickmode": "array", "tickvals": list(range(n_slots)),
               "ticktext": list(result.layer_labels)},
        height=max(420, 22 * n_slots + 160), margin={"l": 70, "r": 20, "t": 60, "b": 60})
    return keep_labels(fig, xaxis=labels, yaxis=list(result.layer_labels))


FIGURES = {"accuracy": accuracy, "nll": nll, "predictions": predictions}
