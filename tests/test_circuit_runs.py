"""Split-input runs and edge ablation (workbench.circuit_runs) on a tiny model of every architecture.

* all deltas zero: the logits are the plain model's, and every reader's input is the sum of the outputs
  of the writers that feed it (circuit_graph's edges) plus the output projections' biases;
* a delta on one head's input changes that head's output only (the others read their own copies);
* keeping every edge is the clean run (M = 1), keeping none with the corrupted source is the corrupted
  run (M = 0); ablating one edge is the split run with that reader's delta set by hand;
* a padded batch gives every pair what it gives alone; circuits batched per forward equal one by one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_circuit_tasks import _pairs_for
from tests.tiny_models import ARCHITECTURES, MATRIX_ARCHITECTURES, build_model_dir
from workbench import circuit_runs as cr
from workbench.circuit_graph import graph_for
from workbench.circuit_tasks import encode_pairs, last_logits
from workbench.errors import BadRequest

ALL_ARCHITECTURES = ARCHITECTURES + MATRIX_ARCHITECTURES


@pytest.fixture(scope="module")
def arch_dirs(tiny_root, tiny_dirs):
    """arch -> directory of every tiny architecture (the matrix ones built on first use)."""
    built = dict(tiny_dirs)

    def get(arch: str):
        if arch not in built:
            built[arch] = build_model_dir(arch, tiny_root / "circuit_matrix" / arch)
        return built[arch]

    return get


@pytest.fixture(params=ALL_ARCHITECTURES)
def task(request, workbench, settings, arch_dirs):
    """(model, graph, batch) of one architecture: three IOI-like pairs of different lengths."""
    model = workbench.model(str(arch_dirs(request.param)))
    batch = encode_pairs(model, _pairs_for(model), settings)
    return model, graph_for(model), batch


def plain_logits(model, ids, batch) -> torch.Tensor:
    with torch.no_grad():
        return last_logits(model.hf_model(input_ids=ids, attention_mask=batch.attention_mask).logits, batch)


def ld_of(batch, logits) -> torch.Tensor:
    return cr._logit_diffs(logits.double(), batch, 1)[0]


def test_zero_deltas_give_the_plain_model_and_inputs_are_sums_of_writers(task):
    model, graph, batch = task
    rows, seq = batch.clean_ids.shape
    d = model.info.d_model
    zeros = cr.FixedDeltas({layer: torch.zeros(rows, graph.n_heads, seq, d) for layer in range(graph.n_layers)},
                           {layer: torch.zeros(rows, seq, d) for layer in range(graph.n_layers)},
                           torch.zeros(rows, seq, d))
    with torch.no_grad():
        run = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last, deltas=zeros,
                               keep_inputs=True)
    torch.testing.assert_close(run.logits, plain_logits(model, batch.clean_ids, batch), atol=2e-5, rtol=1e-4)
    real = batch.attention_mask.bool()
    assert len(run.inputs) == len(graph.readers)
    for r, node in enumerate(graph.readers):
        feeding = graph.edges[graph.edges[:, 1] == graph.index[node.name], 0]
        upstream_blocks = node.layer + (1 if node.kind == "mlp" and not graph.parallel else 0)
        total = run.writes[feeding].sum(0) + run.biases[:upstream_blocks].sum(0)
        torch.testing.assert_close(total[real], run.inputs[r][real], atol=1e-5, rtol=1e-4, msg=node.name)
    # the heads' shares add up to what the attention writes (after a post-norm where there is one)
    for layer in range(graph.n_layers):
        heads = [cr.writer_index(graph, "head", layer, h) for h in range(graph.n_heads)]
        share = run.writes[heads].sum(0) + run.biases[layer]
        torch.testing.assert_close(share[real], run.attn_writes[layer][real], atol=1e-5, rtol=1e-4)
    # the recorded embed output is the model's own block-0 input, and the model is not left modified
    assert torch.equal(run.writes[0], run.inputs[cr.reader_index(graph, "head", 0, 0)])
    torch.testing.assert_close(plain_logits(model, batch.clean_ids, batch), run.logits, atol=2e-5, rtol=1e-4)


def test_a_delta_on_one_head_changes_that_head_only(task):
    model, graph, batch = task
    rows, seq = batch.clean_ids.shape
    layer, head = 1, 2
    delta = torch.zeros(rows, graph.n_heads, seq, model.info.d_model)
    delta[:, head] = torch.randn(rows, seq, model.info.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last)
        moved = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last,
                                 deltas=cr.FixedDeltas({layer: delta}, {}))
    real = batch.attention_mask.bool()
    post_norm = model.spec.attn_post_norm is not None
    factors = []
    for h in range(graph.n_heads):
        i = cr.writer_index(graph, "head", layer, h)
        new, old = moved.writes[i][real], base.writes[i][real]
        if h == head:
            assert float((new - old).abs().max()) > 1e-3
        elif not post_norm:
            assert float((new - old).abs().max()) < 1e-6, h
        else:  # a post-norm rescales every head's share by the same per-position factor, nothing else
            factor = (new * old).sum(-1, keepdim=True) / (old * old).sum(-1, keepdim=True)
            assert float((new - factor * old).abs().max()) < 1e-5, h
            factors.append(factor)
    for factor in factors[1:]:
        torch.testing.assert_close(factor, factors[0], atol=1e-4, rtol=1e-4)
    first_later = cr.writer_index(graph, "mlp", layer) if not graph.parallel else cr.writer_index(graph, "head", 2, 0)
    assert float((moved.writes[first_later] - base.writes[first_later])[real].abs().max()) > 1e-4
    assert torch.equal(moved.writes[: cr.writer_index(graph, "head", layer, 0)],
                       base.writes[: cr.writer_index(graph, "head", layer, 0)])


def test_full_circuit_is_clean_and_empty_circuit_is_corrupted(task):
    model, graph, batch = task
    n = len(graph.edges)
    scores = np.random.default_rng(1).normal(size=n)
    curve = cr.faithfulness_curve(model, batch, graph, scores, [0, n // 3, n], "corrupted")
    np.testing.assert_allclose(curve.ld_clean, ld_of(batch, plain_logits(model, batch.clean_ids, batch)), atol=2e-5)
    np.testing.assert_allclose(curve.ld_corrupted, ld_of(batch, plain_logits(model, batch.corrupted_ids, batch)),
                               atol=2e-5)
    gap = abs(float((curve.ld_clean - curve.ld_corrupted).sum()))
    assert curve.metric[0] == pytest.approx(0.0, abs=1e-4 / gap)
    assert curve.metric[-1] == pytest.approx(1.0, abs=1e-4 / gap)
    lds = cr.ablate(model, batch, graph, np.stack([np.ones(n, bool), np.zeros(n, bool)]))
    torch.testing.assert_close(lds[0], torch.as_tensor(curve.ld_clean), atol=2e-5, rtol=0)
    torch.testing.assert_close(lds[1], torch.as_tensor(curve.ld_corrupted), atol=2e-5, rtol=0)
    # with the mean source the full circuit is still the clean run; the empty one is not the corrupted run
    mean = cr.ablate(model, batch, graph, np.stack([np.ones(n, bool), np.zeros(n, bool)]), "mean")
    torch.testing.assert_close(mean[0], lds[0], atol=2e-5, rtol=0)
    assert float((mean[1] - lds[1]).abs().max()) > 1e-5


def test_ablating_one_edge_is_that_readers_delta(task):
    """Dropping only u -> v changes v's input by -(a_u(clean) - a_u(corrupted)) and nothing else (u's own
    output is untouched by an edge downstream of it)."""
    model, graph, batch = task
    with torch.no_grad():
        clean = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last)
        corrupted = cr.split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last)
    cases = [("a0.h1", "a2.h3"), ("a2.h1", "logits"), ("embed", "m0"), ("m1", "m2")]
    if not graph.parallel:
        cases.append(("a1.h0", "m1"))
    for writer, reader in cases:
        keep = np.ones(len(graph.edges), bool)
        keep[graph.edge_index(writer, reader)] = False
        ablated = cr.ablate(model, batch, graph, keep)
        u = graph.index[writer]
        delta = -(clean.writes[u] - corrupted.writes[u])
        node = graph.node(reader)
        if node.kind == "head":
            heads = torch.zeros(len(batch), graph.n_heads, *delta.shape[1:])
            heads[:, node.head] = delta
            deltas = cr.FixedDeltas({node.layer: heads}, {})
        elif node.kind == "mlp":
            deltas = cr.FixedDeltas({}, {node.layer: delta})
        else:
            deltas = cr.FixedDeltas({}, {}, delta)
        with torch.no_grad():
            by_hand = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last, deltas=deltas)
        torch.testing.assert_close(ablated, ld_of(batch, by_hand.logits), atol=2e-5, rtol=0, msg=f"{writer}->{reader}")
        assert float((ablated - ld_of(batch, clean.logits)).abs().max()) > 1e-7, f"{writer}->{reader} did nothing"


@pytest.mark.parametrize("source", ["corrupted", "mean"])
def test_padded_and_batched_ablation_equal_single_runs(workbench, settings, tiny_dir, source):
    model = workbench.model(str(tiny_dir))
    graph = graph_for(model)
    batch = encode_pairs(model, _pairs_for(model), settings)
    rng = np.random.default_rng(2)
    keep = rng.random((3, len(graph.edges))) < np.array([[0.2], [0.5], [0.9]])
    together = cr.ablate(model, batch, graph, keep, source, max_rows=64)
    one_by_one = cr.ablate(model, batch, graph, keep, source, max_rows=1)
    torch.testing.assert_close(together, one_by_one, atol=2e-5, rtol=0)
    if source == "corrupted":  # the mean is over the task's pairs, so a pair alone has another mean
        for i in range(len(batch)):
            alone = cr.ablate(model, batch.take([i]), graph, keep)
            torch.testing.assert_close(alone[:, 0], together[:, i], atol=2e-5, rtol=0)


def test_curve_helpers_and_bad_input(workbench, settings, tiny_dirs):
    assert cr.area([1, 10, 100], [1.0, 1.0, 1.0], 100) == pytest.approx(1.0)
    # log scale: x = 0, 0.5, 1; trapezoids (0 + 0.5) / 2 * 0.5 + (0.5 + 1) / 2 * 0.5 = 0.5
    assert cr.area([1, 10, 100], [0.0, 0.5, 1.0], 100) == pytest.approx(0.5)
    assert cr.area([0, 50, 100], [0.0, 1.0, 1.0], 100, "fraction") == pytest.approx(0.75)
    assert cr.smallest_recovering([0, 10, 100], [0.1, 0.85, 1.0]) == 10
    assert cr.smallest_recovering([0, 10], [0.1, 0.5]) is None
    assert cr.top_edges(np.array([0.1, -3.0, 2.0, 0.0]), 2).tolist() == [False, True, True, False]
    with pytest.raises(BadRequest, match="scale"):
        cr.area([1, 2], [0, 1], 2, "linear")
    model = workbench.model(str(tiny_dirs["llama"]))
    graph = graph_for(model)
    batch = encode_pairs(model, _pairs_for(model), settings)
    with pytest.raises(BadRequest, match="ablation source"):
        cr.ablate(model, batch, graph, np.ones(len(graph.edges), bool), "zero")
    with pytest.raises(BadRequest, match="entries"):
        cr.ablate(model, batch, graph, np.ones(3, bool))
    with pytest.raises(BadRequest, match="one score per edge"):
        cr.faithfulness_curve(model, batch, graph, np.ones(3), [1])
