"""Figures a researcher can publish: the CSV names layers and tokens as the chart does, exported cell
text is at least 6 pt or dropped, log axes are labelled at decades only and keep a KL of 0, every
chart has a title of its own, the null band is labelled inside the plot, and the palette a figure
uses can be named."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import plotly.graph_objects as go
import pytest

from tests.analysis_examples import examples
from workbench import axes, export, registry
from workbench.analyses.latent_language import LatentLanguageResult
from workbench.analyses.logit_lens import LogitLensResult
from workbench.config import PROJECT_ROOT, Settings
from workbench.figures import depth_use as depth_figures
from workbench.figures import display_token
from workbench.figures import logit_lens as lens_figures
from workbench.figures import tuned_lens as tuned_figures
from workbench.figures.axes import KL_FLOOR
from workbench.service import Workbench

MIN_TEXT_PX = 6 * 96 / 72


@pytest.fixture(scope="module")
def results(tiny_dirs, tmp_path_factory):
    """Every analysis's example result on the tiny Llama (latent language needs a real model)."""
    settings = Settings(cache_dir=tmp_path_factory.mktemp("figure_cache"),
                        models_dir_override=PROJECT_ROOT / "cache" / "models")
    wb = Workbench(settings)
    try:
        yield {name: wb.run(registry.entry(name), str(tiny_dirs["llama"]), request)
               for name, request in examples().items()
               if name != "latent_language" and not registry.entry(name).encoder_decoder}  # T5: test_analyses
    finally:
        wb.close()


def all_figures(results):
    for name, result in results.items():
        entry = registry.entry(name)
        for figure in entry.figures:
            yield name, figure, entry.figure(figure, result)


def lens_result(n_slots: int, tokens, top=lambda slot, pos: f"t{slot}_{pos}", seed: int = 0) -> LogitLensResult:
    """A synthetic logit-lens result: ``n_slots`` slots (embed + blocks), one top-1 token per cell."""
    seq, rng = len(tokens), np.random.default_rng(seed)
    top_tokens = np.array([[[top(s, p)] for p in range(seq)] for s in range(n_slots)])
    kl = rng.random((n_slots, seq)).astype(np.float32) * 5
    kl[-1] = 0.0  # the last slot is the output: KL(final || final) = 0
    return LogitLensResult(
        model_name="synthetic", layer_labels=axes.slot_labels(n_slots - 1), tokens=np.array(tokens),
        top_ids=np.zeros((n_slots, seq, 1), dtype=np.int64), top_tokens=top_tokens,
        top_probs=rng.random((n_slots, seq, 1)).astype(np.float32), kl_to_final=kl, target_token=" Paris",
        target_id=7, target_rank=np.geomspace(40000, 1, n_slots).astype(np.int64),
        target_prob=rng.random(n_slots).astype(np.float32))


# ------------------------------------------------------------------ 1. the CSV carries the chart's labels


def test_logit_lens_csv_names_layers_and_tokens_as_the_chart(results):
    result = results["logit_lens"]
    fig = lens_figures.heatmap(result)
    for size in export.PAPER_STYLES:
        data = export.figure_data(export.styled(fig, export.paper_style(size)))
        assert data.y_label.tolist() == [result.layer_labels[int(y)] for y in data.y]
        assert data.x_label.tolist() == [display_token(result.tokens[int(x)]) for x in data.x]
        assert set(data[data.y == 0].y_label) == {"embed"} and set(data[data.y == 1].y_label) == {"0"}
        assert {"trace", "name", "type", "x", "y", "z", "text"} <= set(data.columns)  # the old columns stay


def test_thinned_layer_ticks_still_name_every_row_and_point_in_the_csv():
    result = lens_result(31, ["The", " capital", " of"])  # SmolLM2's 30 blocks: ticks are thinned at print size
    style = export.paper_style("single column")
    heat = export.styled(lens_figures.heatmap(result), style)
    assert len(heat.layout.yaxis.tickvals) < 31  # fewer labels on the axis ...
    data = export.figure_data(heat)
    assert data.y_label.tolist() == [result.layer_labels[int(y)] for y in data.y]  # ... every one in the CSV
    curves = export.figure_data(export.styled(lens_figures.layer_curves(result), style))
    assert curves.x_label.tolist() == [result.layer_labels[int(x)] for x in curves.x]
    assert curves[curves.name == "target rank"].y_label.isna().all()  # a log axis names no positions


def test_every_label_in_the_csv_is_what_its_axis_shows(results):
    """Wherever a styled chart draws a tick label, the CSV row at that position carries the same text
    (or the whole token where the tick shows it cut with '…')."""
    checked = 0
    for name, figure, fig in all_figures(results):
        out = export.styled(fig, export.paper_style("double column"))
        data = export.figure_data(out)
        for trace_index, trace in enumerate(out.data):
            for letter in ("x", "y"):
                axis = out.layout[f"{letter}axis{(getattr(trace, f'{letter}axis') or letter)[1:]}"]
                if axis.type == "log" or axis.tickvals is None or axis.ticktext is None:
                    continue
                shown = {int(v): str(t).replace("\u200b", "") for v, t in zip(axis.tickvals, axis.ticktext,
                                                                               strict=False)}
                rows = data[data.trace == trace_index]
                for value, label in zip(rows[letter], rows[f"{letter}_label"], strict=True):
                    if not isinstance(value, (int, float, np.integer, np.floating)) or not float(value).is_integer():
                        continue
                    tick = shown.get(int(value))
                    if tick is None:
                        continue
                    assert label == tick or (tick.endswith("…") and label.startswith(tick[:-1])), \
                        (name, figure, letter, value, label, tick)
                    checked += 1
    assert checked > 100


def test_shared_subplot_axes_name_their_rows(results):
    fig = registry.entry("patching").figure("resid", results["patching"])
    data = export.figure_data(fig)
    assert fig.layout.yaxis2.matches == "y" and fig.layout.yaxis2.ticktext is None
    for trace in range(3):  # the three methods, each on its own x axis, all on the first y axis's layers
        rows = data[data.trace == trace]
        assert rows.y_label.tolist() == [str(int(y)) for y in rows.y]
        assert rows.x_label.notna().all()


# ------------------------------------------------------------------ 2. cell text >= 6 pt, or none


@pytest.mark.parametrize("size", list(export.PAPER_STYLES))
def test_exported_cell_text_is_at_least_6pt_and_fits_its_cell(size):
    style = export.paper_style(size)
    kept = 0
    for rows in (2, 5, 19, 31):
        for cols in (3, 8, 24):
            for length in (1, 5, 12):
                text = np.full((rows, cols), "x" * length)
                fig = go.Figure(go.Heatmap(z=np.zeros((rows, cols)), text=text, texttemplate="%{text}"))
                styled = export.styled(fig, style)
                trace, out = styled.data[0], styled.layout
                if not trace.texttemplate:
                    assert trace.text is None
                    continue
                kept += 1
                width = style.width_px - out.margin.l - out.margin.r  # an upper bound of the plot area
                height = style.height_px - out.margin.t - out.margin.b
                assert trace.textfont.size >= MIN_TEXT_PX - 1e-9, (rows, cols, length)
                assert trace.textfont.size <= 0.8 * height / rows + 1e-9
                assert trace.textfont.size * 0.5 * length <= width / cols, (rows, cols, length)
    assert kept > 0  # big enough cells keep their text


def test_real_heatmaps_keep_text_only_at_6pt_or_more(results):
    for name, figure, fig in all_figures(results):
        for size in export.PAPER_STYLES:
            for trace in export.styled(fig, export.paper_style(size)).data:
                if trace.type == "heatmap" and trace.texttemplate:
                    assert trace.textfont.size >= MIN_TEXT_PX - 1e-9, (name, figure, size)


@pytest.mark.browser
def test_the_exported_svg_draws_cell_text_at_6pt_or_more():
    if export.find_browser() is None:
        pytest.skip("no Chromium here")
    exporter = export.ImageExporter()
    try:
        drawn = 0
        for size in export.PAPER_STYLES:
            style = export.paper_style(size)
            out = export.styled(lens_figures.heatmap(lens_result(6, ["The", " cap", " of", " Fr", " is"])), style)
            svg = exporter.render(out, "svg", style).decode()
            sizes = [float(s) for s in re.findall(r'class="heatmap-label"><text [^>]*font-size: ?([\d.]+)px', svg)]
            assert len(sizes) == (30 if out.data[0].texttemplate else 0), size  # every cell's text, or none
            assert all(s >= MIN_TEXT_PX - 1e-6 for s in sizes), (size, min(sizes))
            drawn += len(sizes)
        assert drawn
    finally:
        exporter.close()


# ------------------------------------------------------------------ 5. log axes


def log_axes(fig: go.Figure):
    return [axis for axis in fig.select_yaxes() if axis.type == "log"]


def test_log_axes_are_labelled_at_decades_only(results):
    found = 0
    figures = [f for _, _, f in all_figures(results)] + [lens_figures.layer_curves(lens_result(19, ["a", "b"]))]
    for fig in figures:
        for axis in log_axes(fig):
            found += 1
            assert axis.tickmode == "array" and len(axis.tickvals) == len(axis.ticktext) >= 2
            exponents = np.log10(np.asarray(axis.tickvals, dtype=float))
            np.testing.assert_allclose(exponents, np.round(exponents), atol=1e-12)  # 1, 10, 100: no "2", "5"
            low, high = sorted(axis.range)
            assert all(low <= e <= high for e in exponents)  # every labelled decade is on the axis
            assert axis.minor.tickvals is not None  # minor ticks: marks only (plotly never labels them)
    assert found >= 5


def test_a_kl_of_zero_stays_on_the_log_axis(results):
    lens = results["tuned_lens"]
    fig = tuned_figures.held_out(lens)
    kl_traces = [t for t in fig.data if t.yaxis == "y"]
    assert float(lens.kl_logit[-1]) < KL_FLOOR  # the last slot is the output itself
    low, high = sorted(fig.layout.yaxis.range)
    for trace in kl_traces:
        y = np.asarray(trace.y, dtype=float)
        assert np.all(np.isfinite(y)) and np.all(y >= KL_FLOOR)
        assert low <= np.log10(y.min()) and np.log10(y.max()) <= high
        assert list(trace.marker.symbol)[-1] == "circle-open"
        assert "below 0.0001" in trace.customdata[-1][1]  # the hover says it is clipped
    depth = results["depth_use"]
    zero = dataclasses.replace(depth, skip_kl_last=np.zeros_like(depth.skip_kl_last))
    fig = depth_figures.skip_effects(zero)
    y = np.asarray(fig.data[0].y, dtype=float)
    assert np.all(y == KL_FLOOR) and sorted(fig.layout.yaxis.range)[0] <= np.log10(KL_FLOOR)
    assert all("drawn at 0.0001" in note for note in fig.data[0].customdata)


# ------------------------------------------------------------------ 6. titles and the null band


def latent_result(correct) -> LatentLanguageResult:
    n, rng = len(correct), np.random.default_rng(0)
    return LatentLanguageResult(
        model_name="m", task="translation", target_lang="fr", source_lang="de", pivot_lang="en",
        layer_labels=axes.slot_labels(3), prompts=np.array([f"p{i}" for i in range(n)]),
        answers=np.array(["chat"] * n), pivots=np.array(["cat"] * n), p_answer=rng.random((n, 4)),
        p_pivot=rng.random((n, 4)), final_correct=np.array(correct), skipped=np.array([], dtype=str))


def test_no_two_charts_share_a_title(results):
    titles = {(name, figure): fig.layout.title.text for name, figure, fig in all_figures(results)}
    entry = registry.entry("latent_language")
    for figure in entry.figures:  # every prompt answered correctly: both views used to read the same
        titles[("latent_language", figure)] = entry.figure(figure, latent_result([True, True])).layout.title.text
    assert all(titles.values()), [k for k, t in titles.items() if not t]
    repeated = {t: n for t, n in Counter(titles.values()).items() if n > 1}
    assert not repeated, repeated


def test_null_band_label_is_inside_the_plot_and_readable(results):
    fig = registry.entry("neuron_classes").figure("cosine_distribution", results["neuron_classes"])
    for size in export.PAPER_STYLES:
        style = export.paper_style(size)
        out = export.styled(fig, style)
        label = next(a for a in out.layout.annotations if "null band" in a.text)
        assert label.xref.endswith("domain") and label.yref.endswith("domain")
        assert 0 <= label.x <= 1 and 0 <= label.y <= 1 and label.yanchor == "top" and label.xanchor == "left"
        assert label.font.size >= MIN_TEXT_PX and label.bgcolor  # 6 pt or more, on its own ground
        plot_width = style.width_px - out.layout.margin.l - out.layout.margin.r
        assert len(label.text) * 0.55 * label.font.size <= plot_width * (1 - label.x)  # not cut at the edge


# ------------------------------------------------------------------ 7. the palette a figure uses


def test_palette_names_name_what_each_figure_draws_with(results):
    known = {"Okabe–Ito", "viridis", "PuOr diverging"}
    for name, figure, fig in all_figures(results):
        names = export.palette_names(export.styled(fig, export.paper_style("double column")))
        assert set(names) <= known, (name, figure, names)  # none where only greys are drawn
    patching = export.palette_names(registry.entry("patching").figure("resid", results["patching"]))
    assert patching == ["PuOr diverging"]
    assert export.palette_names(lens_figures.heatmap(results["logit_lens"])) == ["viridis"]
    assert export.palette_names(lens_figures.layer_curves(results["logit_lens"])) == ["Okabe–Ito"]
    odd = go.Figure([go.Scatter(y=[1, 2]), go.Scatter(y=[2, 1], line={"color": "#ff00ff"}),
                     go.Heatmap(z=[[1]], colorscale="Viridis_r"), go.Heatmap(z=[[1]], colorscale=[[0, "red"],
                                                                                                  [1, "blue"]])])
    assert export.palette_names(odd) == ["Okabe–Ito", "other colours", "viridis (reversed)", "custom colour scale"]


# ------------------------------------------------------------------ layout at paper sizes


def styled_figures(results, sizes=("single column", "double column")):
    extra = [lens_figures.layer_curves(lens_result(31, ["a", "b"]))]
    for name, figure, fig in [*all_figures(results), *(("logit_lens", "curves31", f) for f in extra)]:
        for size in sizes:
            style = export.paper_style(size)
            yield (name, figure, size), style, export.styled(fig, style)


def test_titles_fit_the_width_and_the_top_margin(results):
    for where, style, out in styled_figures(results):
        font_px = style.font_pt * 96 / 72
        lines = (out.layout.title.text or "").split("<br>")
        assert all(len(line) * 0.5 * font_px * 1.15 <= style.width_px for line in lines), where
        assert out.layout.margin.t >= len(lines) * 1.2 * font_px * 1.15, where
        for note in out.layout.annotations:  # subplot titles: no line wider than the figure
            assert all(len(line) * 0.5 * font_px <= style.width_px for line in (note.text or "").split("<br>"))


def test_side_by_side_panels_leave_room_for_tick_labels(results):
    checked = 0
    for where, style, out in styled_figures(results):
        width = style.width_px - out.layout.margin.l - out.layout.margin.r
        panels = sorted((a for a in out.select_xaxes() if a.domain), key=lambda a: a.domain[0])
        for left, right in zip(panels, panels[1:], strict=False):
            y_axis = out.layout[f"yaxis{(right.anchor or 'y')[1:]}"]
            if right.domain[0] < left.domain[1] or y_axis is None or y_axis.matches or y_axis.showticklabels is False:
                continue  # another row, or a shared axis without labels
            labels = list(y_axis.ticktext) if y_axis.ticktext is not None else ["0.0"]
            longest = max(len(re.sub(r"<[^>]*>", "", str(t))) for t in labels)
            assert (right.domain[0] - left.domain[1]) * width >= longest * 0.5 * y_axis.tickfont.size, where
            checked += 1
    assert checked >= 4


def test_a_legend_under_the_plot_sits_at_the_bottom_edge_with_room(results):
    moved = 0
    for where, style, out in styled_figures(results):
        legend = out.layout.legend
        if legend.orientation == "h" and legend.yref == "container":
            assert legend.y == 0 and legend.yanchor == "bottom", where
            assert out.layout.margin.b > 5 * style.font_pt * 96 / 72, where  # room beyond the axis titles
            moved += 1
        else:
            assert legend.y is None or legend.y >= 0, where  # never in plot fractions below the axes
    assert moved >= 2


def test_reference_lines_keep_their_width_in_exports(results):
    """simple_white's shape defaults (line width 0, opacity 0.3) would hide every threshold line."""
    fig = registry.entry("neuron_classes").figure("cosine_distribution", results["neuron_classes"])
    out = export.styled(fig, export.paper_style("single column"))
    lines = [shape for shape in out.layout.shapes if shape.type == "line"]
    assert len(lines) == 2 and all(shape.line.dash == "dot" for shape in lines)  # the ±0.5 class thresholds
    assert all((shape.line.width or out.layout.shapedefaults.line.width) >= 1 for shape in lines)
    assert all((shape.opacity or out.layout.shapedefaults.opacity) == 1 for shape in lines)
