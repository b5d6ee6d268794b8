"""Edge attribution (workbench.edge_attribution) on a tiny model of every architecture.

* the scores of the edges out of a writer add up to its node attribution (delta a_u . dM/da_u, from a
  probe on the writer's output: an independent gradient), for AtP, RelP and IG;
* plain EAP is the first-order term of edge patching: a central finite difference along
  a_u(clean) - a_u(corrupted) in one reader's input (float64);
* RelP with every rule conserves relevance across every cut between blocks, counting bias relevance
  (the definition tests/test_patching.py checks block by block); plain gradients do not;
* IG with many steps approaches activation patching of the embeddings (the only node IG's path moves
  alone: patching clean embeddings into the corrupted run is the clean run), the error shrinking with
  the steps;
* a padded batch gives every pair the scores it gets alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_circuit_runs import ALL_ARCHITECTURES, arch_dirs, ld_of  # noqa: F401  (fixture)
from tests.test_circuit_tasks import _pairs_for
from workbench import circuit_runs as cr
from workbench import edge_attribution as ea
from workbench.circuit_graph import graph_for
from workbench.circuit_tasks import encode_pairs
from workbench.errors import BadRequest
from workbench.interventions import Rules

ALL_RULES = Rules(ln=True, identity=True, half=True, attention=True)


@pytest.fixture(params=ALL_ARCHITECTURES)
def task(request, workbench, settings, arch_dirs):  # noqa: F811
    model = workbench.model(str(arch_dirs(request.param)))
    batch = encode_pairs(model, _pairs_for(model), settings)
    return model, graph_for(model), batch


def _split_lds(model, graph, batch):
    with torch.no_grad():
        clean = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last)
        corrupted = cr.split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last)
    return clean, corrupted, ld_of(batch, clean.logits), ld_of(batch, corrupted.logits)


@pytest.mark.parametrize("method", ["atp", "relp", "ig"])
def test_edges_out_of_a_writer_sum_to_its_node_score(task, method):
    model, graph, batch = task
    result = ea.attribute_edges(model, batch, graph, method, steps=2)
    assert result.edge_scores.shape == (len(graph.edges),)
    assert result.node_scores_per_pair.shape == (len(batch), len(graph.writers))
    out = np.zeros(len(graph.writers))
    np.add.at(out, graph.edges[:, 0], result.edge_scores)
    scale = np.abs(result.node_scores).max()
    assert scale > 1e-4
    np.testing.assert_allclose(out, result.node_scores, atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(result.edge_scores_per_pair.mean(0), result.edge_scores, rtol=1e-10, atol=1e-12)
    assert result.seconds > 0 and result.cpu_seconds > 0


def test_eap_equals_finite_difference(task):
    """Each edge score is the derivative of M along eps * (a_u(clean) - a_u(corrupted)) added to one reader's
    input of the corrupted run: a central difference, Richardson-extrapolated from eps = 0.1 and 0.05, for
    edges into a head, an MLP and the logits. In float64, except where transformers' eager sliding-window
    mask gives NaN in float64 (Mistral, Gemma 2/3 here: float32 then); norms and softmax of the
    Llama-like families compute in float32 internally either way, hence the 2e-3 tolerance."""
    model, graph, batch = task
    model.hf_model.double()
    try:
        _clean, _corrupted, ld_clean, _ld_corr = _split_lds(model, graph, batch)
        if not torch.isfinite(ld_clean).all():
            model.hf_model.float()
        result = ea.attribute_edges(model, batch, graph, "atp")
        clean, corrupted, ld_clean, ld_corr = _split_lds(model, graph, batch)
        gap = float((ld_clean - ld_corr).sum())
        cases = [("embed", "a1.h2"), ("a0.h3", "m2"), ("m1", "logits"), ("a1.h1", "a2.h0")]
        top = int(np.argmax(np.abs(result.edge_scores)))
        cases.append(tuple(graph.edge_names()[top].split("->")))
        largest = float(np.abs(result.edge_scores).max())
        assert largest > 1e-3
        for writer, reader in cases:
            u, node = graph.index[writer], graph.node(reader)
            direction = clean.writes[u] - corrupted.writes[u]

            def metric(step, node=node, direction=direction):
                delta = step * direction
                if node.kind == "head":
                    heads = torch.zeros(len(batch), graph.n_heads, *delta.shape[1:], dtype=delta.dtype)
                    heads[:, node.head] = delta
                    deltas = cr.FixedDeltas({node.layer: heads}, {})
                elif node.kind == "mlp":
                    deltas = cr.FixedDeltas({}, {node.layer: delta})
                else:
                    deltas = cr.FixedDeltas({}, {}, delta)
                with torch.no_grad():
                    run = cr.split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last,
                                           deltas=deltas, record=False)
                return float((ld_of(batch, run.logits) - ld_corr).sum()) / gap

            def central(eps, metric=metric):
                return (metric(eps) - metric(-eps)) / (2 * eps)

            finite = (4 * central(0.05) - central(0.1)) / 3
            score = result.edge_scores[graph.edge_index(writer, reader)]
            assert score == pytest.approx(finite, rel=2e-3, abs=1e-4 * largest), f"{writer}->{reader}"
    finally:
        model.hf_model.float()


def test_relp_edges_conserve_relevance_counting_bias_relevance(task):
    """For every cut l (between block l-1 and block l): the relevance value . gradient of the edges that
    cross it, plus that of the projection biases written before it and read after it, plus the bias
    relevance of blocks >= l (and the final norm / unembedding), is the output relevance
    logits . dM/dlogits. l = 0 is the embeddings' edges; l = n_layers the edges into the logits."""
    model, graph, batch = task
    _clean, _corrupted, ld_clean, ld_corr = _split_lds(model, graph, batch)
    layer_of = np.array([node.layer for node in graph.nodes])
    readers_layer = np.array([node.layer for node in graph.readers])

    def gaps(rules):
        grads = ea.reader_gradients(model, graph, batch, ld_clean, ld_corr, rules)
        relevance = ea.edge_products(graph, grads.values, grads).sum(0)
        out = []
        for cut in range(graph.n_layers + 1):
            crossing = (layer_of[graph.edges[:, 0]] < cut) & (layer_of[graph.edges[:, 1]] >= cut)
            after = grads.reader_grads[torch.as_tensor(readers_layer >= cut)].sum(0).double()
            biases = float((grads.biases[:cut].sum(0).double() * after).sum())
            total = float(relevance[torch.as_tensor(crossing)].sum()) + biases + float(grads.bias_relevance[cut:].sum())
            out.append(total - grads.output_relevance)
        return np.array(out), grads.output_relevance

    with_rules, output = gaps(ALL_RULES)
    np.testing.assert_allclose(with_rules, 0.0, atol=1e-4 * max(1.0, abs(output)))
    plain, _ = gaps(Rules())
    assert np.abs(plain).max() > 1e-3 * max(1.0, abs(output))


def test_ig_approaches_activation_patching_of_the_embeddings(task):
    model, graph, batch = task
    clean, _corrupted, ld_clean, ld_corr = _split_lds(model, graph, batch)
    with torch.no_grad():  # activation patching of the embed node: clean embeddings into the corrupted run
        patched = cr.split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last,
                                   x0=clean.writes[0], record=False)
    target = float((ld_of(batch, patched.logits) - ld_corr).sum() / (ld_clean - ld_corr).sum())
    assert target == pytest.approx(1.0, abs=1e-3)
    errors = {}
    for steps in (1, 4, 32):
        result = ea.attribute_edges(model, batch, graph, "ig", steps=steps)
        errors[steps] = abs(result.node_scores[0] - target)
        out_of_embed = result.edge_scores[graph.edges[:, 0] == 0].sum()
        assert out_of_embed == pytest.approx(result.node_scores[0], rel=1e-5, abs=1e-6)
    assert errors[32] < 5e-3
    assert errors[32] < errors[4] or errors[4] < 1e-4
    assert errors[32] < errors[1] / 5


def test_padded_batch_scores_equal_single_runs(workbench, settings, tiny_dir):
    """Per-pair scores are in units of the task's mean gap: times it, they are the pair's own gradient
    of LD, the same alone as in the padded batch."""
    model = workbench.model(str(tiny_dir))
    graph = graph_for(model)
    batch = encode_pairs(model, _pairs_for(model), settings)
    for method in ("atp", "relp"):
        together = ea.attribute_edges(model, batch, graph, method)
        mean_gap = float((together.ld_clean - together.ld_corrupted).mean())
        for i in range(len(batch)):
            alone = ea.attribute_edges(model, batch.take([i]), graph, method)
            own_gap = float(alone.ld_clean[0] - alone.ld_corrupted[0])
            np.testing.assert_allclose(together.node_scores_per_pair[i] * mean_gap, alone.node_scores * own_gap,
                                       atol=2e-6, rtol=1e-3)
            np.testing.assert_allclose(together.edge_scores_per_pair[i] * mean_gap, alone.edge_scores * own_gap,
                                       atol=2e-6, rtol=1e-3)


def test_methods_differ_and_bad_input(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    graph = graph_for(model)
    batch = encode_pairs(model, _pairs_for(model), settings)
    atp = ea.attribute_edges(model, batch, graph, "atp")
    relp = ea.attribute_edges(model, batch, graph, "relp")
    assert relp.rules == ea.RELP_RULES and atp.rules == Rules()
    assert np.abs(atp.edge_scores - relp.edge_scores).max() > 1e-4
    with pytest.raises(BadRequest, match="Unknown edge attribution method"):
        ea.attribute_edges(model, batch, graph, "acdc")
    with pytest.raises(BadRequest, match="steps"):
        ea.attribute_edges(model, batch, graph, "ig", steps=0)
    calls = []
    ea.attribute_edges(model, batch, graph, "ig", steps=2, progress=lambda f, m: calls.append(f))
    assert calls[-1] == 1.0 and calls == sorted(calls)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_ioi_invariants(workbench, settings, name):
    """On the real models and four IOI pairs: the split run is the model, the full and empty circuits give
    M = 1 and 0, edges out of a writer sum to its node score, RelP (all rules) conserves relevance at the
    embeddings' cut, and the strongest head by AtP matters when its edges are ablated."""
    from workbench.prompt_pairs import ioi_pairs

    model = workbench.model(name)
    graph = graph_for(model)
    batch = encode_pairs(model, ioi_pairs(model, 4, 0, settings), settings)
    clean, _corrupted, ld_clean, ld_corr = _split_lds(model, graph, batch)
    with torch.no_grad():
        plain = model.hf_model(input_ids=batch.clean_ids, attention_mask=batch.attention_mask).logits
    plain_ld = ld_of(batch, plain[torch.arange(len(batch)), batch.last])
    torch.testing.assert_close(ld_clean, plain_ld, atol=1e-3, rtol=1e-4)
    assert float((ld_clean - ld_corr).sum()) > 1.0  # the model does IOI
    n = len(graph.edges)
    lds = cr.ablate(model, batch, graph, np.stack([np.ones(n, bool), np.zeros(n, bool)]), max_rows=8)
    gap = float((ld_clean - ld_corr).sum())
    assert float((lds[0] - ld_corr).sum()) / gap == pytest.approx(1.0, abs=1e-3)
    assert float((lds[1] - ld_corr).sum()) / gap == pytest.approx(0.0, abs=1e-3)
    atp = ea.attribute_edges(model, batch, graph, "atp")
    out = np.zeros(len(graph.writers))
    np.add.at(out, graph.edges[:, 0], atp.edge_scores)
    np.testing.assert_allclose(out, atp.node_scores, atol=1e-4 * np.abs(atp.node_scores).max(), rtol=1e-4)
    grads = ea.reader_gradients(model, graph, batch, ld_clean, ld_corr, ALL_RULES)
    embed_edges = torch.as_tensor(graph.edges[:, 0] == 0)
    total = float(ea.edge_products(graph, grads.values, grads).sum(0)[embed_edges].sum())
    total += float(grads.bias_relevance.sum())
    assert total == pytest.approx(grads.output_relevance, rel=1e-3, abs=1e-3)
    # the head AtP ranks first matters: ablating every edge out of it (its corrupted output in the clean
    # run) moves M away from 1, the way its score says
    heads = [i for i, node in enumerate(graph.writers) if node.kind == "head"]
    best = max(heads, key=lambda i: abs(atp.node_scores[i]))
    without = cr.ablate(model, batch, graph, graph.edges[:, 0] != best, max_rows=8)
    lost = 1.0 - float((without - ld_corr).sum()) / gap
    assert abs(lost) > 0.02 and np.sign(lost) == np.sign(atp.node_scores[best])
