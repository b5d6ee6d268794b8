"""Circuit figures (workbench.figures.circuit) on synthetic graphs from circuit_graph.Graph: the threshold,
the cap on drawn edges, sign colours, widths, node totals, highlighting, the faithfulness curves, the JSON
round trip, and the export path (CSV data, palettes, PNG through kaleido)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workbench import export
from workbench.circuit_graph import Graph
from workbench.errors import BadRequest
from workbench.figures import circuit

SMALL = Graph(n_layers=3, n_heads=2, parallel=False)


def scores_for(graph: Graph, seed: int = 0) -> np.ndarray:
    """Distinct signed scores, heavy-tailed like real attributions."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(2, len(graph.edges)) * 1e-2


def line_traces(fig):
    return [t for t in fig.data if t.mode == "lines"]


def drawn_segments(fig, graph: Graph):
    """(writer name, reader name) -> the line trace drawing it, read back from the coordinates."""
    x, y, _ = circuit.node_columns(graph.nodes)
    at = {(float(a), float(b)): graph.nodes[i].name for i, (a, b) in enumerate(zip(x, y, strict=True))}
    out = {}
    for trace in line_traces(fig):
        xs, ys = list(trace.x), list(trace.y)
        assert len(xs) % 3 == 0 and xs[2::3] == [None] * (len(xs) // 3)  # start, end, break: one polyline
        for i in range(0, len(xs), 3):
            key = (at[(xs[i], ys[i])], at[(xs[i + 1], ys[i + 1])])
            assert key not in out  # every edge once
            out[key] = trace
    return out


def test_threshold_removes_edges_and_counts_are_said():
    scores = scores_for(SMALL)
    magnitude, names = np.abs(scores), SMALL.edge_names()
    previous = None
    for threshold in (0.0, float(np.quantile(magnitude, 0.5)), float(np.quantile(magnitude, 0.9)),
                      float(magnitude.max()), float(magnitude.max()) * 2):
        fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, threshold)
        expected = int((magnitude >= threshold).sum())
        segments = drawn_segments(fig, SMALL)
        assert len(segments) == expected == sum(t.meta["edges"] for t in line_traces(fig))
        wanted = {tuple(names[i].split("->")) for i in np.flatnonzero(magnitude >= threshold)}
        assert set(segments) == wanted
        assert previous is None or expected <= previous
        previous = expected
        assert f"all {expected} edges with |score| ≥ {threshold:.3g} drawn, of {len(scores)} scored" \
            in fig.layout.title.subtitle.text
    assert expected == 0 and "No edge has |score|" in fig.layout.annotations[0].text


def test_edges_are_coloured_by_sign_and_widened_by_magnitude():
    scores = scores_for(SMALL, seed=1)
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, 0.0)
    by_name = dict(zip((tuple(n.split("->")) for n in SMALL.edge_names()), scores, strict=True))
    largest = np.abs(scores).max()
    for key, trace in drawn_segments(fig, SMALL).items():
        score = by_name[key]
        assert trace.line.color == (circuit.POSITIVE if score > 0 else circuit.NEGATIVE)
        assert trace.meta["sign"] == np.sign(score)
        low, high = trace.meta["score_range"]
        assert low <= abs(score) <= high + 1e-12
        assert trace.line.width == circuit.WIDTHS[min(int(abs(score) / largest * 4), 3)]
    widths = {t.line.width for t in line_traces(fig)}
    assert max(widths) == circuit.WIDTHS[-1] and len(widths) > 1  # the largest edge gets the widest line
    assert {circuit.POSITIVE, circuit.NEGATIVE} == {t.line.color for t in line_traces(fig)}
    assert sum(t.showlegend for t in line_traces(fig)) == 2  # one legend entry per sign


def test_a_smollm2_sized_graph_draws_the_top_edges_in_few_traces():
    graph = Graph(n_layers=30, n_heads=9, parallel=False)
    scores = scores_for(graph, seed=2)
    assert len(graph.edges) == 44371
    fig = circuit.graph_figure(graph.nodes, graph.edges, scores, 0.0, max_edges=500)
    segments = drawn_segments(fig, graph)
    top, names = np.argsort(-np.abs(scores))[:500], graph.edge_names()
    assert set(segments) == {tuple(names[i].split("->")) for i in top}
    assert len(line_traces(fig)) <= 2 * len(circuit.WIDTHS) and len(fig.data) <= 2 * len(circuit.WIDTHS) + 5
    assert "500 of 44371 edges with |score| ≥ 0 drawn (the 500 largest; 43871 left out)" \
        in fig.layout.title.subtitle.text
    hover = next(t for t in fig.data if t.name == "edge scores")  # one hover point per drawn edge
    assert len(hover.x) == 500 and hover.marker.opacity == 0


def test_layout_runs_left_to_right_by_layer():
    graph = Graph(n_layers=4, n_heads=3, parallel=True)
    x, y, labels = circuit.node_columns(graph.nodes)
    for writer, reader in graph.edges:
        assert x[writer] < x[reader]  # every edge points right: the diagram reads in layer order
    for layer in range(4):
        heads = [graph.index[f"a{layer}.h{h}"] for h in range(3)]
        assert len({x[i] for i in heads}) == 1 and len({y[i] for i in heads}) == 3  # one column, spread
        assert labels[int(x[heads[0]])] == f"a{layer}" and labels[int(x[graph.index[f"m{layer}"]])] == f"m{layer}"
    assert labels[int(x[graph.index["embed"]])] == "embed" and labels[int(x[graph.index["logits"]])] == "logits"


def test_node_hover_gives_the_node_total_and_click_data_its_name():
    scores = scores_for(SMALL, seed=3)
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, 0.0)
    hover, names = {}, []
    for trace in fig.data:
        if trace.mode and "markers" in trace.mode and trace.name != "edge scores":
            names += list(trace.customdata)
            hover.update(zip(trace.customdata, trace.hovertext, strict=True))
    assert sorted(names) == sorted(n.name for n in SMALL.nodes)
    for name in ("embed", "a0.h1", "m1", "a2.h0"):
        outgoing = scores[SMALL.edges[:, 0] == SMALL.index[name]].sum()
        assert f"total score {outgoing:+.4g} (sum of its outgoing edges)" in hover[name]
    incoming = scores[SMALL.edges[:, 1] == SMALL.index["logits"]].sum()
    assert f"total score {incoming:+.4g} (sum of its incoming edges)" in hover["logits"]
    given = np.arange(len(SMALL.nodes), dtype=float) - 3
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, 0.0, node_scores=given)
    assert any("m1<br>total score " + f"{given[SMALL.index['m1']]:+.4g} (node score)" in h
               for t in fig.data if t.hovertext for h in t.hovertext)


def test_highlight_keeps_a_node_s_edges_and_dims_the_rest():
    scores = scores_for(SMALL, seed=4)
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, 0.0, highlight="a1.h0")
    index = SMALL.index["a1.h0"]
    for (writer, reader), trace in drawn_segments(fig, SMALL).items():
        near = index in (SMALL.index[writer], SMALL.index[reader])
        assert trace.opacity == (circuit.EDGE_OPACITY if near else circuit.DIM_OPACITY)
    heads = next(t for t in fig.data if t.name == "attention heads")
    where = list(heads.customdata).index("a1.h0")
    assert heads.marker.line.width[where] == 3 and heads.text[where] == "a1.h0"
    assert sum(w == 3 for w in heads.marker.line.width) == 1
    plain = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, 0.0)
    assert len(line_traces(fig)) > len(line_traces(plain)) and {t.opacity for t in line_traces(plain)} == \
        {circuit.EDGE_OPACITY}


def test_bad_input_is_refused():
    scores = scores_for(SMALL)
    for threshold in (-0.1, math.nan, math.inf, "0.1", True):
        with pytest.raises(BadRequest, match="threshold must be a number of 0 or more"):
            circuit.graph_figure(SMALL.nodes, SMALL.edges, scores, threshold)
    with pytest.raises(ValueError, match="scores for"):
        circuit.graph_figure(SMALL.nodes, SMALL.edges, scores[:-1], 0.0)
    with pytest.raises(ValueError, match="outside the node list"):
        circuit.graph_figure(SMALL.nodes[:3], SMALL.edges, scores, 0.0)
    nan = scores.copy()
    nan[0] = np.nan
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, nan, 0.0)  # a NaN edge is never drawn
    assert len(drawn_segments(fig, SMALL)) == len(scores) - 1


def test_title_is_shown_literally():
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores_for(SMALL), 0.0, title="<a href='x'>m</a> ioi")
    assert "<a href" not in fig.layout.title.text and "a href" in fig.layout.title.text


def test_curve_figure_has_a_log_size_axis_and_the_80_percent_line():
    sizes = [0, 1, 10, 100, 1000, 44371]
    curves = {"AtP": (sizes, [0.0, 0.1, 0.3, 0.6, 0.9, 1.0]), "RelP": (sizes, [0.0, 0.2, 0.5, 0.8, 0.95, 1.0]),
              "IG": (sizes[1:], [0.15, 0.4, 0.7, 0.92, 1.0])}
    fig = circuit.curve_figure(curves)
    assert [t.name for t in fig.data] == ["AtP", "RelP", "IG"]
    assert list(fig.data[0].x) == sizes[1:] and list(fig.data[0].y) == [0.1, 0.3, 0.6, 0.9, 1.0]  # 0 left out
    assert "empty circuit: 0.000" in fig.data[0].hovertemplate and "empty" not in fig.data[2].hovertemplate
    axis = fig.layout.xaxis
    assert axis.type == "log" and np.allclose(np.log10(axis.tickvals), np.round(np.log10(axis.tickvals)))
    assert axis.range[0] <= 0 and axis.range[1] >= math.log10(44371)
    assert [(s.y0, s.y1) for s in fig.layout.shapes] == [(0.8, 0.8)]
    assert fig.layout.yaxis.range[0] <= 0 and fig.layout.yaxis.range[1] >= 1
    assert len({t.line.color for t in fig.data}) == 3
    with pytest.raises(ValueError, match="3 sizes for 2 values"):
        circuit.curve_figure({"x": ([1, 2, 3], [0.1, 0.2])})


def test_json_round_trip_is_exact():
    scores = scores_for(Graph(5, 3, False), seed=5).astype(np.float32)
    graph = Graph(5, 3, False)
    scores[7] = np.nan
    task = {"name": "ioi", "n_pairs": 20, "seed": 0, "source": "Wang et al. 2023"}
    rules = {"ln": True, "identity": True, "half": True, "ah": False}
    text = circuit.json_export(graph.nodes, graph.edges, scores, model="smollm2-135m", task=task, method="relp",
                               rules=rules, threshold=0.01)
    assert "NaN" not in text and "Infinity" not in text
    document = json.loads(text)
    assert document["format"] == circuit.JSON_FORMAT and document["version"] == circuit.JSON_VERSION
    assert len(document["nodes"]) == len(graph.nodes) and len(document["edges"]) == len(graph.edges)
    assert document["edges"][7]["score"] is None
    assert document["nodes"][1] == {"name": "a0.h0", "kind": "head", "layer": 0, "head": 0,
                                    "score": pytest.approx(float(np.nansum(scores[graph.edges[:, 0] == 1])))}
    nodes, edges, back, rest = circuit.graph_from_json(text)
    assert nodes == graph.nodes and np.array_equal(edges, graph.edges)
    assert np.array_equal(back.astype(np.float32), scores, equal_nan=True)  # bit for bit
    assert rest["task"] == task and rest["rules"] == rules and rest["method"] == "relp"
    assert rest["model"] == "smollm2-135m" and rest["threshold"] == 0.01
    for bad in ("{", "[]", json.dumps({"format": "other"}),
                json.dumps({"format": circuit.JSON_FORMAT, "version": 1, "nodes": [{"name": "x"}], "edges": []})):
        with pytest.raises(BadRequest):
            circuit.graph_from_json(bad)
    with pytest.raises(ValueError, match="not plain JSON data"):
        circuit.json_export(graph.nodes, graph.edges, scores, model="m", task={"x": object()}, method="m", rules={})


def test_figures_export_as_data_with_named_columns_and_okabe_ito_colours():
    fig = circuit.graph_figure(SMALL.nodes, SMALL.edges, scores_for(SMALL), 0.0)
    data = export.figure_data(fig)
    heads = data[data.name == "attention heads"]
    assert sorted(set(heads.x_label)) == ["a0", "a1", "a2"] and set(data[data.name == "MLPs"].x_label) == \
        {"m0", "m1", "m2"}
    curves = circuit.curve_figure({"AtP": ([1, 10], [0.5, 1.0])})
    for figure in (fig, curves):
        assert export.palette_names(export.styled(figure, export.paper_style("double column"))) == ["Okabe–Ito"]


@pytest.mark.browser
def test_figures_export_to_png():
    if export.find_browser() is None:
        pytest.skip("no Chromium here")
    graph = Graph(n_layers=30, n_heads=9, parallel=False)
    exporter = export.ImageExporter()
    try:
        style = export.paper_style("double column")
        for fig in (circuit.graph_figure(graph.nodes, graph.edges, scores_for(graph), 0.0, highlight="a9.h1",
                                         title="smollm2-135m, ioi"),
                    circuit.curve_figure({"AtP": ([1, 10, 100], [0.2, 0.6, 1.0])})):
            png = exporter.render(export.styled(fig, style), "png", style)
            assert png.startswith(b"\x89PNG")
            width = int.from_bytes(png[16:20], "big")
            assert width == round(style.width_px * export.PNG_DPI / export.PX_PER_INCH)
    finally:
        exporter.close()
