"""Fitting a figure's layout to a paper size, so that nothing overlaps or is cut off.

Owns ``fit`` (called by ``style.styled`` once fonts and margins are set): titles and subplot titles
broken into lines that fit, with room made for them above the plot; tick labels thinned where they
would overlap (layers on y and x axes, tokens on x axes only where even upright labels cannot all
stand; the full labels recorded first, ``figures.axes.keep_labels``, for the data export);
subplots spaced so that each panel's tick labels and axis title fit between it and its neighbour; a
horizontal legend under the plot moved to the figure's bottom edge, with room made for it. Works
on text-width estimates (``CHAR_EM`` per narrow character), needs no browser.
"""

from __future__ import annotations

import math
import re
import textwrap

import plotly.graph_objects as go

from workbench.figures.axes import keep_labels, recorded_labels

CHAR_EM = 0.6  # mean width of one narrow character, in font sizes (Arial, a little generous)
_LAYER_LABEL = re.compile(r"embed|\d+")
_TAG = re.compile(r"<[^>]*>")


def fit(fig: go.Figure, width_px: float, height_px: float, font_px: float) -> None:
    """Fit ``fig`` (already at its fonts and margins) to ``width_px`` x ``height_px``, in place."""
    _space_subplots(fig, width_px, font_px)
    _wrap_titles(fig, width_px, height_px, font_px)
    _thin_y_ticks(fig, width_px, height_px, font_px)
    _thin_x_ticks(fig, width_px, font_px)
    _place_legend(fig, width_px, font_px)


def _plot_width(fig: go.Figure, width_px: float, font_px: float | None = None) -> float:
    """The plot area's width: the figure less its margins and, given the font, a colour bar."""
    margin = fig.layout.margin
    width = width_px - (margin.l or 0) - (margin.r or 0)
    if font_px and any(t.type == "heatmap" and t.showscale is not False for t in fig.data):
        width -= colorbar_width(font_px)
    legend = fig.layout.legend
    names = _legend_names(fig)
    if font_px and legend.orientation != "h" and fig.layout.showlegend is not False and len(names) > 1:
        width -= max(label_width(n, font_px * 0.9) for n in names) + 5 * font_px * 0.9  # a legend on the right
    return width


def _legend_names(fig: go.Figure) -> list[str]:
    return list(dict.fromkeys(t.name for t in fig.data if t.name and t.showlegend is not False))


def colorbar_width(font_px: float) -> float:
    """Room a styled colour bar takes on the right: the bar, its tick labels and padding."""
    return 3.5 * font_px + 20


def label_width(text, font_px: float) -> float:
    """Estimated width in px of one line of text (markup tags not counted)."""
    return len(_TAG.sub("", str(text))) * CHAR_EM * font_px


# ------------------------------------------------------------------ titles


def _wrap(text: str, max_chars: float) -> tuple[str, int]:
    """``text`` broken into lines ('<br>') of at most ``max_chars`` characters at spaces; the line count."""
    lines = [line for part in str(text).split("<br>")
             for line in (textwrap.wrap(part, max(8, int(max_chars)), break_long_words=False) or [""])]
    return "<br>".join(lines), len(lines)


def _is_subplot_title(note) -> bool:
    return note.yanchor == "bottom" and note.xref == "paper" and note.yref == "paper" and not note.showarrow


def _wrap_titles(fig: go.Figure, width_px: float, height_px: float, font_px: float) -> None:
    """Break the title and subplot titles into lines that fit the width (a title is never cut off
    at the figure's edge), and make room for them in the top margin."""
    plot_width = _plot_width(fig, width_px)
    sub_lines = 0
    for note in fig.layout.annotations:
        if _is_subplot_title(note):
            text, lines = _wrap(note.text or "", plot_width * _subplot_share(fig, note.x) / (0.55 * font_px))
            note.update(text=text)
            sub_lines = max(sub_lines, lines)
    title_px = font_px * 1.15
    text, lines = _wrap(fig.layout.title.text or "", (width_px - 2 * font_px) / (0.55 * title_px))
    if not fig.layout.title.text:
        lines = 0
    # plotly anchors a multi-line title half its extra lines too high: move the anchor down that far
    first_line = 0.4 * font_px + max(lines - 1, 0) * 0.65 * title_px
    fig.update_layout(title={"text": text or None, "yref": "container", "yanchor": "top",
                             "y": 1 - first_line / height_px})
    top = 0.4 * font_px + lines * 1.3 * title_px + sub_lines * 1.25 * font_px + 0.8 * font_px
    legend = fig.layout.legend
    if legend.orientation == "h" and (legend.y or 0) >= 1 and legend.yref in (None, "paper"):
        top += _legend_height(fig, width_px, font_px)  # a legend over the plot sits under the title
    elif legend.orientation == "h" and legend.yref == "container" and (legend.y or 0) > 0.5:
        title_block = 0.4 * font_px + lines * 1.3 * title_px  # a legend at the top edge: under the title
        fig.update_layout(legend={"y": 1 - title_block / height_px, "yanchor": "top"})
        top += _legend_height(fig, width_px, font_px)
    fig.update_layout(margin={"t": max(top, 2 * font_px)})


def _subplot_share(fig: go.Figure, x: float | None) -> float:
    """The width share of the x axis whose domain holds ``x`` (a subplot title's centre), else 1."""
    for axis in fig.select_xaxes():
        if axis.domain and x is not None and axis.domain[0] <= x <= axis.domain[1]:
            return axis.domain[1] - axis.domain[0]
    return 1.0


# ------------------------------------------------------------------ ticks


def _thin_y_ticks(fig: go.Figure, width_px: float, height_px: float, font_px: float) -> None:
    """Keep every k-th label of an explicit y tick list (layers) so labels do not overlap at this
    size (x axes: ``_thin_x_ticks``). The full labels of a thinned axis are recorded first for the
    data export."""
    margin = fig.layout.margin
    plot_height = height_px - (margin.t or 0) - (margin.b or 0) - _turned_x_labels(fig, width_px, font_px)
    for axis in fig.select_yaxes():
        if axis.tickvals is None or axis.ticktext is None or len(axis.tickvals) < 2:
            continue
        share = axis.domain[1] - axis.domain[0] if axis.domain else 1.0
        room = min(height_px * 0.7, plot_height) * share
        count, step = len(axis.tickvals), 1
        while -(-count // step) * font_px * 1.2 > room and step < count:
            step += 1
        if step > 1:
            _record_ticks(fig, axis)
            axis.update(tickvals=list(axis.tickvals)[::step], ticktext=list(axis.ticktext)[::step])


def _turned_x_labels(fig: go.Figure, width_px: float, font_px: float) -> float:
    """Extra height in px that x tick labels plotly turns upright (too many to sit side by side)
    take beyond the bottom margin: the longest label, less the margin's own room for one line."""
    plot_width, extra = _plot_width(fig, width_px, font_px), 0.0
    for axis in fig.select_xaxes():
        if axis.ticktext is None or not len(axis.ticktext):
            continue
        share = axis.domain[1] - axis.domain[0] if axis.domain else 1.0
        widths = [label_width(t, font_px * 0.9) for t in axis.ticktext]
        if sum(widths) + font_px * len(widths) > plot_width * share:
            extra = max(extra, max(widths) - 1.5 * font_px)
    return extra


def _thin_x_ticks(fig: go.Figure, width_px: float, font_px: float) -> None:
    """Keep every k-th label of an explicit x tick list where the labels cannot all be read at this
    size: layer labels ("embed", "0", ...) side by side, other labels (tokens) even when plotly turns
    them upright, one line of text each."""
    plot_width = _plot_width(fig, width_px, font_px)
    tick_px = font_px * 0.9
    for axis in fig.select_xaxes():
        if axis.tickvals is None or axis.ticktext is None or len(axis.tickvals) < 2:
            continue
        labels = [str(t) for t in axis.ticktext]
        share = axis.domain[1] - axis.domain[0] if axis.domain else 1.0
        per_tick = 0.9 * plot_width * share / len(labels)  # px between neighbouring positions
        side_by_side = all(_LAYER_LABEL.fullmatch(t) for t in labels)
        widths = [label_width(t, tick_px) for t in labels]
        step = 1
        while step < len(labels):
            kept = widths[::step]
            if side_by_side:  # neighbours must not touch: half of each label's width and a gap
                needed = max((a + b) / 2 for a, b in zip(kept, kept[1:], strict=False)) + 0.8 * tick_px
            else:
                needed = 1.3 * tick_px  # upright labels stand one line apart
            if step * per_tick >= needed or len(kept) < 2:
                break
            step += 1
        if step > 1:
            _record_ticks(fig, axis)
            axis.update(tickvals=list(axis.tickvals)[::step], ticktext=labels[::step])


def _record_ticks(fig: go.Figure, axis) -> None:
    """Record a (non-log) axis's integer tick labels, unless the figure recorded its labels itself."""
    name = axis.plotly_name
    if axis.type == "log" or name in recorded_labels(fig.layout.to_plotly_json()):
        return
    pairs = {int(v): str(t) for v, t in zip(axis.tickvals, axis.ticktext, strict=False)
             if float(v).is_integer() and v >= 0}
    if pairs:
        keep_labels(fig, **{name: [pairs.get(i) for i in range(max(pairs) + 1)]})


# ------------------------------------------------------------------ subplots and legend


def _y_axis_of(fig: go.Figure, x_axis):
    anchor = x_axis.anchor if x_axis.anchor and x_axis.anchor != "free" else "y"
    return fig.layout[f"yaxis{anchor[1:]}"]


def _left_room(y_axis, font_px: float) -> float:
    """Width in px a panel's y axis needs on its left: tick labels, ticks and its title."""
    if y_axis is None or y_axis.showticklabels is False or y_axis.matches:
        return 1.0 * font_px
    tick_px = (y_axis.tickfont.size or font_px * 0.9)
    texts = list(y_axis.ticktext) if y_axis.ticktext is not None else ["-0.00"]
    room = max(label_width(t, tick_px) for t in texts) + 0.8 * font_px
    if y_axis.title.text:
        room += 2.0 * font_px
    return room


def _space_subplots(fig: go.Figure, width_px: float, font_px: float) -> None:
    """Widen the gaps between side-by-side panels where a panel's y tick labels and title would
    run into its left neighbour; panels keep their relative widths, subplot titles follow."""
    plot_width = _plot_width(fig, width_px, font_px)
    rows: dict[tuple, list] = {}
    for axis in fig.select_xaxes():
        y_axis = _y_axis_of(fig, axis)
        if axis.domain and y_axis is not None and y_axis.domain:
            rows.setdefault(tuple(round(v, 4) for v in y_axis.domain), []).append(axis)
    for panels in rows.values():
        panels.sort(key=lambda a: a.domain[0])
        if len(panels) < 2:
            continue
        gaps = [(b.domain[0] - a.domain[1]) * plot_width for a, b in zip(panels, panels[1:], strict=False)]
        needs = [_left_room(_y_axis_of(fig, b), font_px) for b in panels[1:]]
        if all(g >= n for g, n in zip(gaps, needs, strict=True)):
            continue
        needs = [max(g, n) for g, n in zip(gaps, needs, strict=True)]
        start, end = panels[0].domain[0], panels[-1].domain[1]
        widths = [a.domain[1] - a.domain[0] for a in panels]
        scale = max((end - start) - sum(needs) / plot_width, 0.1) / sum(widths)
        old = [tuple(a.domain) for a in panels]
        position = start
        for index, axis in enumerate(panels):
            axis.update(domain=[position, position + widths[index] * scale])
            position += widths[index] * scale + (needs[index] / plot_width if index < len(needs) else 0)
        _move_subplot_titles(fig, old, [tuple(a.domain) for a in panels])


def _move_subplot_titles(fig: go.Figure, old: list[tuple], new: list[tuple]) -> None:
    for note in fig.layout.annotations:
        if not _is_subplot_title(note) or note.x is None:
            continue
        for (a0, a1), (b0, b1) in zip(old, new, strict=True):
            if a0 <= note.x <= a1:
                note.update(x=b0 + (note.x - a0) / max(a1 - a0, 1e-9) * (b1 - b0))
                break


def _place_legend(fig: go.Figure, width_px: float, font_px: float) -> None:
    """A horizontal legend placed under the plot (y < 0, in plot fractions, which shrink with the
    figure and run into the axis titles) goes to the figure's bottom edge, with room made for it."""
    legend = fig.layout.legend
    if legend.orientation != "h" or legend.y is None or legend.y >= 0 or fig.layout.showlegend is False:
        return
    height = _legend_height(fig, width_px, font_px)
    if not height:
        return
    margin = fig.layout.margin
    fig.update_layout(legend={"yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.5, "xanchor": "center"},
                      margin={"b": (margin.b or 0) + height})


def _legend_height(fig: go.Figure, width_px: float, font_px: float) -> float:
    """Height in px of the figure's horizontal legend: its entries in rows across the width; 0 if none."""
    names = _legend_names(fig)
    if not names:
        return 0.0
    legend_px = (fig.layout.legend.font.size or font_px * 0.9)
    room, rows, used = width_px - 2 * font_px, 1, 0.0
    for name in names:
        item = label_width(name, legend_px) + 5 * legend_px  # symbol and gap
        if used and used + item > room:
            rows, used = rows + 1, 0.0
        used += item
    return math.ceil(rows * 1.5 * legend_px + 0.5 * font_px)
