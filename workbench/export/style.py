"""Paper styles of exported figures.

Owns ``PaperStyle`` (size in inches, font in points) and the named sizes (``PAPER_STYLES``:
single / double column, slide), the colour-blind-safe colour cycle (``OKABE_ITO``, Okabe & Ito
2008) for anything a figure leaves unset, the px / dpi constants images are laid out with, and
``styled``: a copy of a figure at a style's size and fonts, its layout fitted to that size
(``export.layout``: titles wrapped, layer ticks thinned, panels spaced, legend placed) and heatmap
cell text fitted to its cells (height and text width) at no less than ``MIN_TEXT_PT``, or dropped;
and ``palette_names``: the colour palettes a figure actually draws with, for the export caption.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from workbench.errors import BadRequest
from workbench.export import layout
from workbench.export.data import _as_array
from workbench.export.layout import CHAR_EM
from workbench.figures.axes import text_width

PX_PER_INCH = 96  # plotly/kaleido lay out in CSS pixels
PNG_DPI = 300
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MIN_TEXT_PT = 6  # smallest text an exported figure draws in its heatmap cells


@dataclass(frozen=True)
class PaperStyle:
    """Size in inches and font size in points of an exported figure."""

    name: str
    width_in: float
    height_in: float
    font_pt: float
    font_family: str = "Arial, Helvetica, sans-serif"

    @property
    def width_px(self) -> int:
        return round(self.width_in * PX_PER_INCH)

    @property
    def height_px(self) -> int:
        return round(self.height_in * PX_PER_INCH)


PAPER_STYLES = {
    style.name: style
    for style in (
        PaperStyle("single column", 3.4, 2.6, 7),
        PaperStyle("double column", 7.0, 3.2, 8),
        PaperStyle("double column, tall", 7.0, 5.0, 8),
        PaperStyle("slide", 10.0, 5.6, 14),
    )
}
DEFAULT_STYLE = "double column"


def paper_style(name: str) -> PaperStyle:
    if name not in PAPER_STYLES:
        raise BadRequest(f"Unknown figure size {name!r}. Sizes: {', '.join(PAPER_STYLES)}.")
    return PAPER_STYLES[name]


def styled(fig: go.Figure, style: PaperStyle) -> go.Figure:
    """A copy of ``fig`` at the style's size and font on a white background, Okabe-Ito colours
    for any trace that sets none, legend and margins scaled to the font."""
    out = go.Figure(fig)
    font_px = style.font_pt * PX_PER_INCH / 72
    out.update_layout(
        template="simple_white", colorway=list(OKABE_ITO), width=style.width_px, height=style.height_px,
        font={"family": style.font_family, "size": font_px, "color": "black"},
        title={"font": {"size": font_px * 1.15}},
        margin={"l": 6 * font_px, "r": 2 * font_px, "t": 4 * font_px, "b": 5 * font_px},
        legend={"font": {"size": font_px * 0.9}},
        # plotly's own shape defaults, not simple_white's (line width 0, opacity 0.3, black fill), which
        # hide every reference line (thresholds, windows, y = 0) that leaves them unset
        shapedefaults={"line": {"width": 2}, "opacity": 1, "fillcolor": "rgba(0,0,0,0)"},
    )
    out.update_annotations(font_size=font_px)  # subplot titles
    out.update_xaxes(title_font_size=font_px, tickfont_size=font_px * 0.9)
    out.update_yaxes(title_font_size=font_px, tickfont_size=font_px * 0.9)
    layout.fit(out, style.width_px, style.height_px, font_px)
    for trace in out.data:
        if trace.type == "heatmap":
            trace.update(colorbar={"title": {"font": {"size": font_px}}, "tickfont": {"size": font_px * 0.9},
                                   "thickness": font_px * 1.2})
            _fit_cell_text(out, trace, style, font_px)
    return out


def _plot_area(fig: go.Figure, trace, style: PaperStyle, font_px: float) -> tuple[float, float]:
    """(width, height) in px of the trace's plot area at this style: the figure less its margins, a
    colour bar and a little slack for tick labels, times the share of its axes' domains."""
    margin = fig.layout.margin
    width = style.width_px - (margin.l or 0) - (margin.r or 0)
    height = style.height_px - (margin.t or 0) - (margin.b or 0)
    if trace.showscale is not False:
        width -= layout.colorbar_width(font_px)
    shares = []
    for ref in (trace.xaxis or "x", trace.yaxis or "y"):
        axis = fig.layout[f"{ref[0]}axis{ref[1:]}"]
        shares.append(axis.domain[1] - axis.domain[0] if axis is not None and axis.domain else 1.0)
    return 0.9 * width * shares[0], 0.9 * height * shares[1]


def _fit_cell_text(fig: go.Figure, trace, style: PaperStyle, font_px: float) -> None:
    """Size a heatmap's in-cell text to its cells at this size: no taller than 0.8 of a cell, its
    longest text no wider than a cell, at most the tick font; text that would come out smaller than
    ``MIN_TEXT_PT`` is dropped (``textfont.size`` still records the size it would have had)."""
    if trace.z is None or not (trace.text is not None or trace.texttemplate):
        return
    z = _as_array(trace.z)
    rows, cols = (z.shape + (1,))[:2] if z.ndim >= 1 else (1, 1)
    width, height = _plot_area(fig, trace, style, font_px)
    text = _as_array(trace.text)
    longest = max((text_width(t) for t in text.ravel()), default=1.0) if text is not None else 4.0
    size = min(font_px * 0.9, 0.8 * height / max(rows, 1), width / max(cols, 1) / (CHAR_EM * max(longest, 1.0)))
    if size < MIN_TEXT_PT * PX_PER_INCH / 72:
        trace.update(texttemplate="", text=None, textfont={"size": max(size, 1.0)})  # plotly takes >= 1
    else:
        trace.update(textfont={"size": size})


# ------------------------------------------------------------------ palettes

OKABE_ITO_NAME = "Okabe–Ito"
SCALE_NAMES = {"viridis": "viridis", "puor": "PuOr diverging", "cividis": "cividis", "rdbu": "RdBu diverging"}
NEUTRAL = {"#bbbbbb", "#999999", "#777777", "#808080", "grey", "gray", "black", "white", "#000000", "#ffffff"}


def palette_names(fig: go.Figure) -> list[str]:
    """The colour palettes the figure's traces draw with, in order of first use: "Okabe–Ito" for
    lines, bars and markers in its colours (or left to a styled figure's colour cycle), the name of
    each colour scale ("viridis", "PuOr diverging", other plotly scale names), "other colours" for
    anything else. Neutral greys, black and white are no palette."""
    names: list[str] = []
    for trace in fig.data:
        for name in _trace_palettes(trace):
            if name not in names:
                names.append(name)
    return names


_SCALED = ("heatmap", "contour", "histogram2d", "surface")  # traces coloured by their own colour scale


def _trace_palettes(trace) -> list[str]:
    if trace.type in _SCALED:
        return [_scale_name(trace.colorscale)]
    found = []
    marker = getattr(trace, "marker", None)
    marker_colour = getattr(marker, "color", None)
    if getattr(marker, "colorscale", None) is not None and np.ndim(marker_colour) > 0:  # colour by value
        found.append(_scale_name(marker.colorscale))
    colours = [c for c in (getattr(getattr(trace, "line", None), "color", None), marker_colour,
                           getattr(trace, "fillcolor", None)) if isinstance(c, str)]
    if not colours and not found:
        return [OKABE_ITO_NAME]  # no colour of its own: the styled figure's Okabe-Ito colour cycle
    okabe = {c.lower() for c in OKABE_ITO}
    for colour in (_hex(c) for c in colours):
        if colour in okabe:
            found.append(OKABE_ITO_NAME)
        elif colour not in NEUTRAL:
            found.append("other colours")
    return found


def _hex(colour: str) -> str:
    colour = colour.strip().lower()
    if colour.startswith(("rgb(", "rgba(")):
        r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1:-1].split(",")[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    return colour


def _scale_name(scale) -> str:
    if scale is None:
        return "plotly default scale"
    if isinstance(scale, str):
        key = scale.lower()
    else:
        key = _known_scales().get(_scale_key(scale), "")
    if not key:
        return "custom colour scale"
    reverse = key.endswith("_r")
    base = key.removesuffix("_r")
    return SCALE_NAMES.get(base, base) + (" (reversed)" if reverse else "")


def _scale_key(scale) -> tuple:
    return tuple((round(float(p), 6), _hex(str(c))) for p, c in scale)


@functools.cache
def _known_scales() -> dict[tuple, str]:
    """Every named plotly colour scale (and its reverse) by its stops."""
    known = {}
    for name in plotly.colors.named_colorscales():
        for variant in (name, name + "_r"):
            try:
                known.setdefault(_scale_key(plotly.colors.get_colorscale(variant)), variant)
            except Exception:  # noqa: BLE001  (a name plotly lists but cannot build)
                continue
    return known
