"""Paper styles of exported figures.

Owns ``PaperStyle`` (size in inches, font in points) and the named sizes (``PAPER_STYLES``:
single / double column, slide), the colour-blind-safe colour cycle (``OKABE_ITO``, Okabe & Ito
2008) for anything a figure leaves unset, the px / dpi constants images are laid out with, and
``styled``: a copy of a figure at a style's size and fonts, with layer ticks thinned and heatmap
cell text fitted so nothing overlaps at that size.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from workbench.errors import BadRequest
from workbench.export.data import _as_array

PX_PER_INCH = 96  # plotly/kaleido lay out in CSS pixels
PNG_DPI = 300
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


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
    )
    out.update_annotations(font_size=font_px)  # subplot titles
    out.update_xaxes(title_font_size=font_px, tickfont_size=font_px * 0.9)
    out.update_yaxes(title_font_size=font_px, tickfont_size=font_px * 0.9)
    _thin_ticks(out, style, font_px)
    for trace in out.data:
        if trace.type == "heatmap":
            trace.update(colorbar={"title": {"font": {"size": font_px}}, "tickfont": {"size": font_px * 0.9},
                                   "thickness": font_px * 1.2})
            _fit_cell_text(trace, style, font_px)
    return out


def _thin_ticks(fig: go.Figure, style: PaperStyle, font_px: float) -> None:
    """Keep every k-th label of an explicit y tick list (layers) so labels do not overlap at this
    size; x labels (tokens) are all kept, plotly turns them when they crowd."""
    for axis in fig.select_yaxes():
        if axis.tickvals is None or axis.ticktext is None or len(axis.tickvals) < 2:
            continue
        share = axis.domain[1] - axis.domain[0] if axis.domain else 1.0
        room = style.height_px * 0.7 * share
        count, step = len(axis.tickvals), 1
        while -(-count // step) * font_px * 1.2 > room and step < count:
            step += 1
        if step > 1:
            axis.update(tickvals=list(axis.tickvals)[::step], ticktext=list(axis.ticktext)[::step])


def _fit_cell_text(trace, style: PaperStyle, font_px: float) -> None:
    """Shrink a heatmap's in-cell text to its cells' height at this size, or drop it when too small."""
    if trace.z is None or not (trace.text is not None or trace.texttemplate):
        return
    rows = len(_as_array(trace.z))
    plot_height = style.height_px * 0.7  # roughly what the margins leave
    size = min(font_px * 0.8, 0.8 * plot_height / max(rows, 1))
    if size < 4:
        trace.update(texttemplate="", text=None)
    else:
        trace.update(textfont={"size": size})
