"""The circuit analysis (workbench.analyses.circuit) and the Circuits page, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.page_helpers import open_page
from tests.test_circuit_tasks import task_dirs  # noqa: F401 (the fixture: tiny models whose tokens are task words)
from workbench import circuit_runs, circuit_tasks
from workbench.analyses import circuit
from workbench.analyses.circuit import CircuitRequest, default_sizes
from workbench.errors import BadRequest
from workbench.figures import circuit as circuit_figures

PAIR = ("When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
SWAPPED = (PAIR[1], PAIR[0], PAIR[3], PAIR[2])


def _csv_request(**fields) -> CircuitRequest:
    return CircuitRequest(task="csv", n_pairs=2, csv_name="two", pairs=(PAIR, SWAPPED), **fields)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_curves_run_from_the_corrupted_to_the_clean_metric(workbench, tiny_dirs, arch):
    result = workbench.circuit(str(tiny_dirs[arch]), _csv_request(sizes=(0, 3, 30)))
    graph = result.graph
    assert list(result.sizes) == [0, 3, 30, len(graph.edges)]
    # float32 noise over a random model's small clean-corrupted gap: about 1e-4 of M
    np.testing.assert_allclose(result.curves[:, 0], 0.0, atol=1e-3)  # the empty circuit: the corrupted runs
    np.testing.assert_allclose(result.curves[:, -1], 1.0, atol=1e-3)  # every edge: the clean runs
    assert result.edge_scores.shape == (3, len(graph.edges))
    # the edges out of a writer sum to its node score, for every method
    for m in range(len(result.methods)):
        sums = np.zeros(len(graph.writers))
        np.add.at(sums, graph.edges[:, 0], result.edge_scores[m].astype(np.float64))
        np.testing.assert_allclose(sums, result.node_scores[m], rtol=2e-3, atol=1e-5)
        np.testing.assert_allclose(result.node_scores_per_pair[m].mean(0), result.node_scores[m], rtol=1e-4, atol=1e-6)
    # the curve's first point equals a real ablation run of that circuit
    model = workbench.model(str(tiny_dirs[arch]))
    batch = circuit_tasks.encode_pairs(model, [circuit_tasks.PromptPair(*PAIR), circuit_tasks.PromptPair(*SWAPPED)],
                                       workbench.settings)
    keep = circuit_runs.top_edges(result.edge_scores[0], 3)
    ld = circuit_runs.ablate(model, batch, graph, keep).numpy()
    expected = (ld - result.ld_corrupted).sum() / (result.ld_clean - result.ld_corrupted).sum()
    assert result.curves[0, 1] == pytest.approx(expected, abs=1e-4)  # batched rows: float32 rounding differs
    assert set(result.recovering.tolist()) <= set(result.sizes.tolist()) | {-1}


def test_result_is_cached_exactly(workbench, tiny_dirs):
    model = str(tiny_dirs["llama"])
    request = _csv_request(methods=("atp",), sizes=(0, 10))
    first = workbench.circuit(model, request)
    again = workbench.circuit(model, request)
    assert workbench.store.count_results("circuit") == 1
    for name in ("edge_scores", "node_scores", "node_scores_per_pair", "curves", "areas", "ld_clean"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))


def test_bad_requests():
    with pytest.raises(BadRequest, match="Unknown task"):
        CircuitRequest(task="nope")
    with pytest.raises(BadRequest, match="methods"):
        CircuitRequest(methods=("atp", "atp"))
    with pytest.raises(BadRequest, match="csv task needs"):
        CircuitRequest(task="csv")
    with pytest.raises(BadRequest, match="four cells"):
        CircuitRequest(task="csv", pairs=(("a", "b", "c"),))
    with pytest.raises(BadRequest, match="source"):
        CircuitRequest(source="zero")
    assert default_sizes(44371)[:5] == (0, 1, 2, 5, 10) and default_sizes(44371)[-1] == 44371


def test_figures_graph_json_and_node_views(workbench, tiny_dirs):
    model = str(tiny_dirs["llama"])
    result = workbench.circuit(model, _csv_request(sizes=(0, 10)))
    graph = result.graph
    fig = circuit_figures.result_graph(result, "relp")
    assert "relp" in fig.layout.title.text
    text = circuit_figures.json_export(graph.nodes, graph.edges, result.edge_scores[1], model=result.model_name,
                                       method="relp", rules={"rules": result.rules}, task={"task": result.task})
    nodes, edges, scores, rest = circuit_figures.graph_from_json(text)
    assert len(nodes) == len(graph.nodes) and rest["method"] == "relp"
    np.testing.assert_array_equal(scores, result.edge_scores[1].astype(np.float64))
    bars = circuit_figures.node_pairs_figure(result, "atp", "a1.h0")
    np.testing.assert_allclose(bars.data[0].y, result.node_scores_per_pair[0, :, graph.index["a1.h0"]])
    tokens, pattern = workbench.head_attention(model, PAIR[0], 1, 0)
    assert pattern.shape == (len(tokens), len(tokens))
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
    assert np.triu(pattern, 1).max() == 0.0  # causal
    with pytest.raises(BadRequest, match="no head"):
        workbench.head_attention(model, PAIR[0], 99, 0)
    assert circuit.ANALYSIS.figure("curves", result).data


def test_circuits_page_builds_a_circuit_and_shows_a_node(app, task_dirs):  # noqa: F811
    at = open_page(app, "app_pages/circuits.py", str(task_dirs["llama"]))
    assert not at.exception
    at.number_input(key="ci_pairs").set_value(3)
    at.multiselect(key="ci_methods").set_value(["atp", "relp"])
    at.button(key="FormSubmitter:ci_form-Find circuits").click().run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert any("Faithfulness by ablation" in t for t in titles)
    assert any(t.startswith("Circuit of") for t in titles)
    at.select_slider(key="ci_threshold").set_value(20).run(timeout=120)
    at.selectbox(key="ci_node_pick").set_value("a1.h0").run(timeout=120)
    assert not at.exception and not at.error
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("a1.h0: score per pair" in t for t in titles)
    assert any(t.startswith("Head a1.h0 on pair 1") for t in titles)
    assert at.get("download_button")
