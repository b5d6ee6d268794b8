"""Shared axis conventions of the figures: labelled integer positions, shortened token labels and
log axes labelled at decades.

* ``keep_labels`` records each labelled axis's full labels (one per integer position) in
  ``layout.meta["axis_labels"]``, so the data export (``export.figure_data``) names every position
  as the chart does, even where the ticks are thinned (every k-th layer) or cut (long tokens).
* ``shorten`` cuts a label to a display width with an ellipsis ('…'); wide (CJK) characters count
  double. ``token_ticks`` / ``cell_chars`` size token labels for axis ticks and heatmap cells.
* ``log_axis`` draws a log axis with ticks at whole decades only (no stray "2", "5" between them),
  unlabelled minor ticks, and a range that shows at least one labelled decade; ``floored`` clips
  values below a floor (a KL of exactly 0 has no place on a log axis) and says so in the hover.
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np
import plotly.graph_objects as go

from workbench.figures import display_token

AXIS_LABELS = "axis_labels"  # layout.meta key: axis name ('xaxis', 'yaxis2', ...) -> label per position
ELLIPSIS = "…"
TICK_CHARS = 10  # longest token label on an axis (display width), ellipsis included
CELL_TEXT_PX = 10  # font size of in-cell text on screen
CHAR_PX = 6.2  # mean width of one narrow character at CELL_TEXT_PX (Arial / Open Sans)
HEATMAP_PLOT_PX = 700  # plot-area width a heatmap gets on screen (wide layout, minus colour bar)
KL_FLOOR = 1e-4  # nats: a KL below this is drawn at it on a log axis (the hover gives the true value)


# ------------------------------------------------------------------ labels of integer positions


def keep_labels(fig: go.Figure, **axes) -> go.Figure:
    """Record ``axis_name=labels`` (label of integer position i = labels[i]) in the figure's meta."""
    meta = dict(fig.layout.meta) if isinstance(fig.layout.meta, dict) else {}
    recorded = dict(meta.get(AXIS_LABELS, {}))
    recorded.update({name: [str(label) for label in labels] for name, labels in axes.items()})
    fig.update_layout(meta={**meta, AXIS_LABELS: recorded})
    return fig


def recorded_labels(layout: dict) -> dict[str, list]:
    """``keep_labels``'s record in a figure's layout (as a dict), or {}."""
    meta = layout.get("meta")
    return dict(meta.get(AXIS_LABELS, {})) if isinstance(meta, dict) else {}


# ------------------------------------------------------------------ shortened token labels


def char_width(char: str) -> float:
    """Display width in narrow characters: 2 for wide / full-width (CJK), 0 for combining marks."""
    if unicodedata.combining(char):
        return 0.0
    return 2.0 if unicodedata.east_asian_width(char) in ("W", "F") else 1.0


def text_width(text: str) -> float:
    return sum(char_width(c) for c in str(text))


def shorten(text: str, max_width: float) -> str:
    """``text`` cut to ``max_width`` narrow characters, the ellipsis included; unchanged if it fits."""
    text = str(text)
    if text_width(text) <= max_width:
        return text
    out, used = [], 1.0  # the ellipsis
    for char in text:
        if used + char_width(char) > max_width:
            break
        out.append(char)
        used += char_width(char)
    return "".join(out) + ELLIPSIS


def token_ticks(tokens, max_width: float = TICK_CHARS) -> list[str]:
    """Axis tick labels of tokens: visible whitespace and bytes, long tokens cut with '…'."""
    return [shorten(display_token(t), max_width) for t in tokens]


def cell_chars(columns: int, plot_px: float = HEATMAP_PLOT_PX, char_px: float = CHAR_PX) -> int:
    """How many narrow characters fit in one of ``columns`` heatmap cells on screen (2 to 12)."""
    return int(min(12, max(2, math.floor(plot_px / max(columns, 1) / char_px))))


def token_axis(tokens, title: str, max_width: float = TICK_CHARS) -> dict:
    """An axis of integer positions labelled with (shortened) tokens."""
    return {"title": title, "tickmode": "array", "tickvals": list(range(len(tokens))),
            "ticktext": token_ticks(tokens, max_width)}


# ------------------------------------------------------------------ log axes


def floored(values, floor: float = KL_FLOOR, unit: str = "nats") -> tuple[np.ndarray, list[str], list[str]]:
    """``values`` clipped below at ``floor`` for a log axis, with per point the hover note and
    marker symbol: a clipped point is an open circle and its hover gives the true value."""
    values = np.asarray(values, dtype=np.float64)
    clipped = values < floor
    notes = [f"{v:.3g} {unit} (below {floor:g}: drawn at {floor:g})" if c else f"{v:.3f} {unit}"
             for v, c in zip(values, clipped, strict=True)]
    symbols = ["circle-open" if c else "circle" for c in clipped]
    return np.where(clipped, floor, values), notes, symbols


def _decade_text(exponent: int, plain: bool) -> str:
    if plain:
        return f"{10.0 ** exponent:g}"
    return f"10<sup>{exponent}</sup>".replace("-", "\u2212")


def decade_ticks(values, max_labels: int = 6) -> dict:
    """Log-axis settings for ``values`` (> 0): labels at whole decades only, thinned to at most
    ``max_labels``, unlabelled minor ticks at 2..9 x each decade, a range spanning whole decades."""
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not len(finite):
        return {"type": "log", "dtick": 1, "exponentformat": "power"}
    low = math.floor(math.log10(finite.min()) + 1e-6)  # float32 0.0001 is a decade, not just below one
    high = max(math.ceil(math.log10(finite.max()) - 1e-6), low + 1)
    exponents = list(range(low, high + 1))
    step = -(-len(exponents) // max_labels)
    shown = exponents[::step]
    plain = -3 <= low and high <= 4
    minor = [m * 10.0 ** e for e in exponents[:-1] for m in range(2, 10)] if len(exponents) <= 6 else []
    pad = 0.04 * (high - low)
    return {
        "type": "log", "tickmode": "array", "tickvals": [10.0 ** e for e in shown],
        "ticktext": [_decade_text(e, plain) for e in shown], "range": [low - pad, high + pad],
        "minor": {"tickmode": "array", "tickvals": minor, "ticks": "outside", "ticklen": 3, "showgrid": False},
    }


def log_axis(fig: go.Figure, values, reverse: bool = False, **where) -> None:
    """Make the y axis at ``where`` (row=, col=) a decade-labelled log axis fitted to ``values``."""
    settings = decade_ticks(values)
    if reverse and "range" in settings:
        settings["range"] = settings["range"][::-1]
    elif reverse:
        settings["autorange"] = "reversed"
    fig.update_yaxes(**settings, **where)
