"""Circuit edge attribution and ablation as nnsight traces (workbench.circuit_trace), local and on "NDIF".

* traced == hook-based (``edge_attribution.attribute_edges``, also a pair per trace, ``circuit_runs.ablate`` /
  ``faithfulness_curve``) on tiny models of several architectures: to float32 round-off, and to 1e-9 of
  the largest score in float64 where the model runs in float64;
* the loopback "server" of tests/test_remote.py (nnsight's RemoteBackend.request replaced by a function that
  deserialises the very bytes nnsight would POST and runs them on a separately loaded copy of the model):
  the shipped program is the local traced block (same AST, same values read), the in-trace helpers travel
  as source, no weights travel, and the edge scores and ablation LDs that come back are bit-identical to
  the local traced run's;
* the circuit analysis on a remote model runs through the traces and equals the same analysis forced onto
  the traced path locally (EAP, RelP and EAP-IG); RelP's AH rule is refused there.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_circuit_runs import arch_dirs  # noqa: F401  (fixture)
from tests.test_circuit_tasks import _pairs_for
from tests.test_remote import _same_value, _shipped, _target, local_blocks, loopback  # noqa: F401  (fixtures)
from workbench import circuit_runs as cr
from workbench import circuit_trace as ct
from workbench import edge_attribution as ea
from workbench import remote
from workbench.analyses import circuit
from workbench.circuit_graph import graph_for
from workbench.circuit_tasks import encode_pairs
from workbench.config import Settings
from workbench.errors import BadRequest
from workbench.interventions import Rules
from workbench.models import catalog, loader

TRACED_ARCHITECTURES = ("llama", "gpt2", "gemma3_text", "gpt_neox", "phi", "olmo2", "gemma2", "gptj")


@pytest.fixture(params=TRACED_ARCHITECTURES)
def task(request, workbench, settings, arch_dirs):  # noqa: F811
    model = workbench.model(str(arch_dirs(request.param)))
    batch = encode_pairs(model, _pairs_for(model), settings)
    return model, graph_for(model), batch


def _compare_attribution(local, traced, rel):
    scale = float(np.abs(local.edge_scores).max())
    assert scale > 1e-4
    assert traced.edge_scores_per_pair.shape == local.edge_scores_per_pair.shape
    np.testing.assert_allclose(traced.edge_scores_per_pair, local.edge_scores_per_pair, rtol=0, atol=rel * scale)
    np.testing.assert_allclose(traced.edge_scores, local.edge_scores, rtol=0, atol=rel * scale)
    np.testing.assert_allclose(traced.node_scores_per_pair, local.node_scores_per_pair, rtol=0, atol=rel * scale)
    np.testing.assert_allclose(traced.ld_clean, local.ld_clean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(traced.ld_corrupted, local.ld_corrupted, rtol=0, atol=1e-5)
    assert (traced.method, traced.steps) == (local.method, local.steps)


@pytest.mark.parametrize("method", ["atp", "relp", "ig"])
def test_traced_attribution_equals_hook_based(task, method):
    model, graph, batch = task
    local = ea.attribute_edges(model, batch, graph, method, steps=3)
    traced = ct.attribute_edges_traced(model, batch, graph, method, steps=3)
    _compare_attribution(local, traced, 1e-3)  # float32; measured at most 1e-4 of the largest score
    assert traced.rules == local.rules
    # one pair per trace (each trimmed to its own length) gives every pair the same scores
    _compare_attribution(local, ct.attribute_edges_traced(model, batch, graph, method, steps=3, max_rows=1), 1e-3)
    # the edges out of a writer still add up to its node score (an independent gradient, from a probe)
    out = np.zeros(len(graph.writers))
    np.add.at(out, graph.edges[:, 0], traced.edge_scores)
    np.testing.assert_allclose(out, traced.node_scores, atol=1e-5 * np.abs(traced.node_scores).max(), rtol=1e-5)
    # in float64 the two paths agree to round-off (Gemma's eager sliding-window mask is NaN in float64)
    model.hf_model.double()
    try:
        local = ea.attribute_edges(model, batch, graph, method, steps=3)
        if model.spec.family in ("gemma2", "gemma3"):
            assert not np.isfinite(local.ld_clean).all()  # if this starts to hold, drop the exception
        else:
            _compare_attribution(local, ct.attribute_edges_traced(model, batch, graph, method, steps=3), 1e-9)
    finally:
        model.hf_model.float()


@pytest.mark.parametrize("source", ["corrupted", "mean"])
def test_traced_ablation_equals_hook_based(task, source):
    model, graph, batch = task
    n = len(graph.edges)
    keep = np.random.default_rng(3).random((4, n)) < np.array([[0.0], [0.2], [0.7], [1.0]])
    local = cr.ablate(model, batch, graph, keep, source)
    traced, corrupted = ct.ablate_traced(model, batch, graph, keep, source, with_corrupted=True)
    torch.testing.assert_close(traced, local, atol=2e-6, rtol=0)
    assert float((traced[1] - traced[3]).abs().max()) > 1e-4  # the circuits differ: the ablation did something
    # one circuit per trace gives the same numbers as four per trace
    torch.testing.assert_close(ct.ablate_traced(model, batch, graph, keep, source, max_rows=1), traced,
                               atol=2e-6, rtol=0)
    torch.testing.assert_close(ct.ablate_traced(model, batch, graph, keep[2], source), traced[2], atol=2e-6, rtol=0)
    # every edge kept is the clean run; the source group is the corrupted run
    with torch.no_grad():
        clean = cr.split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last)
        corr = cr.split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last)
    torch.testing.assert_close(traced[3], cr._logit_diffs(clean.logits.double(), batch, 1)[0], atol=2e-6, rtol=0)
    torch.testing.assert_close(corrupted, cr._logit_diffs(corr.logits.double(), batch, 1)[0], atol=2e-6, rtol=0)
    if source == "corrupted":  # no edge kept, every edge carries the corrupted value: the corrupted run
        torch.testing.assert_close(traced[0], corrupted, atol=2e-6, rtol=0)


def test_traced_faithfulness_curve_equals_hook_based(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["gpt2"]))
    graph = graph_for(model)
    batch = encode_pairs(model, _pairs_for(model), settings)
    scores = np.random.default_rng(1).normal(size=len(graph.edges))
    sizes = [0, 5, 40, len(graph.edges)]
    for source in ("corrupted", "mean"):
        local = cr.faithfulness_curve(model, batch, graph, scores, sizes, source)
        traced = ct.faithfulness_curve_traced(model, batch, graph, scores, sizes, source, max_rows=6)
        assert traced.sizes.tolist() == local.sizes.tolist()
        np.testing.assert_allclose(traced.metric, local.metric, atol=1e-4, rtol=1e-4)  # M = LD / a small gap
        np.testing.assert_allclose(traced.ld_clean, local.ld_clean, atol=2e-6, rtol=0)
        np.testing.assert_allclose(traced.ld_corrupted, local.ld_corrupted, atol=2e-6, rtol=0)
    assert traced.metric[-1] == pytest.approx(1.0, abs=1e-4)


def test_traced_bad_input(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    graph = graph_for(model)
    batch = encode_pairs(model, _pairs_for(model), settings)
    with pytest.raises(BadRequest, match="AH rule"):
        ct.attribute_edges_traced(model, batch, graph, "relp", rules=Rules(ln=True, attention=True))
    with pytest.raises(BadRequest, match="Unknown edge attribution method"):
        ct.attribute_edges_traced(model, batch, graph, "acdc")
    with pytest.raises(BadRequest, match="steps"):
        ct.attribute_edges_traced(model, batch, graph, "ig", steps=0)
    with pytest.raises(BadRequest, match="ablation source"):
        ct.ablate_traced(model, batch, graph, np.ones(len(graph.edges), bool), "zero")
    with pytest.raises(BadRequest, match="entries"):
        ct.ablate_traced(model, batch, graph, np.ones(3, bool))
    with pytest.raises(BadRequest, match="one score per edge"):
        ct.faithfulness_curve_traced(model, batch, graph, np.ones(3), [1])
    same = dataclasses.replace(batch, corrupted_ids=batch.clean_ids)
    with pytest.raises(BadRequest, match="undefined"):
        ct.attribute_edges_traced(model, same, graph)


# ---------------------------------------------------------------------- on "NDIF" (the loopback server)

REMOTE_ARCHITECTURES = ("llama", "gpt2", "gemma3_text")


@pytest.fixture(scope="module", params=REMOTE_ARCHITECTURES)
def remote_arch(request):
    return request.param


@pytest.fixture(scope="module")
def server_model(remote_arch, tiny_dirs):
    """NDIF's copy of the model (overrides test_remote's llama-only fixture, which ``loopback`` runs on)."""
    settings = Settings()
    return loader.load(catalog.materialize(catalog.resolve(str(tiny_dirs[remote_arch])), settings), settings)


@pytest.fixture
def client_model(remote_arch, server_model, tiny_dirs, tmp_path):
    """The remote model as the workbench holds it: a weightless meta skeleton from config and tokenizer."""
    for path in tiny_dirs[remote_arch].iterdir():
        if path.name in remote.METADATA_FILES:
            shutil.copy(path, tmp_path / path.name)
    assert not list(tmp_path.glob("*.safetensors"))
    lm = remote.meta_model(tmp_path, server_model.spec.rename_table())
    return dataclasses.replace(server_model, lm=lm, tokenizer=lm.tokenizer, remote=_target())


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return _same_value(a, b)


def _check_requests(sent, seen, server_model, client_model, n):
    """Each of the ``n`` requests is the local traced block with the local values, helpers as source, no
    weights; and the client never ran or loaded anything."""
    assert len(sent) == n and len(seen) == n
    for (request_model, blob, backend), (local_ast, local_frame) in zip(sent, seen, strict=True):
        raw, source, _globals, variables = _shipped(request_model, blob, server_model)
        assert ast.dump(ast.parse(source)) == local_ast
        assert variables and set(variables) <= set(local_frame)
        for name, value in variables.items():
            assert _same(value, local_frame[name]), name
        assert "model" not in variables  # the LoadedModel (it holds a lock) never travels
        assert b"def _widen(x, k):" in raw and b"def _copy0(x, rows, k):" in raw  # helpers travel as source
        assert re.search(rb"workbench\.\w", raw) is None  # nothing to import from workbench (NDIF lacks it)
        assert request_model.model_key == remote.default_model_key("tiny-org/tiny-llama")
        assert backend.api_key == "test-key" and b"test-key" not in raw
        for name, param in server_model.hf_model.named_parameters():
            data = param.detach().numpy().tobytes()
            chunk = data[len(data) // 2 : len(data) // 2 + 64]  # mid-tensor: Gemma's first embedding row is zeros
            assert len(set(chunk)) > 8 and chunk not in raw, f"{name} is in the payload"
    assert not client_model.lm.dispatched
    assert next(client_model.lm._module.parameters()).device.type == "meta"


@pytest.mark.parametrize("method", ["atp", "relp", "ig"])
def test_remote_attribution_is_bit_identical(method, server_model, client_model, loopback, local_blocks,  # noqa: F811
                                             settings):
    batch = encode_pairs(server_model, _pairs_for(server_model), settings)
    graph = graph_for(server_model)
    local = ct.attribute_edges_traced(server_model, batch, graph, method, steps=2)
    assert len(local_blocks) == 1 and not loopback
    remote_result = ct.attribute_edges_traced(client_model, batch, graph, method, steps=2)
    _check_requests(loopback, local_blocks, server_model, client_model, 1)
    for field in ("edge_scores", "edge_scores_per_pair", "node_scores", "node_scores_per_pair", "ld_clean",
                  "ld_corrupted"):
        mine, theirs = getattr(local, field), getattr(remote_result, field)
        assert mine.shape == theirs.shape and np.array_equal(mine, theirs), field
    assert np.abs(local.edge_scores).max() > 1e-4


@pytest.mark.parametrize("source", ["corrupted", "mean"])
def test_remote_ablation_is_bit_identical(source, server_model, client_model, loopback, local_blocks,  # noqa: F811
                                          settings):
    batch = encode_pairs(server_model, _pairs_for(server_model), settings)
    graph = graph_for(server_model)
    keep = np.random.default_rng(4).random((3, len(graph.edges))) < np.array([[0.1], [0.5], [0.9]])
    local = ct.ablate_traced(server_model, batch, graph, keep, source, max_rows=2 * len(batch))  # two traces
    remote_lds = ct.ablate_traced(client_model, batch, graph, keep, source, max_rows=2 * len(batch))
    _check_requests(loopback, local_blocks[:2], server_model, client_model, 2)
    assert torch.equal(local, remote_lds)
    torch.testing.assert_close(remote_lds, cr.ablate(server_model, batch, graph, keep, source), atol=2e-6, rtol=0)


def test_circuit_analysis_runs_remotely(server_model, client_model, loopback, settings, monkeypatch):  # noqa: F811
    """The analysis on a remote model: attribution and curves through the traces (on the loopback), the
    same numbers as the analysis forced onto the traced path on the local copy; RelP's AH rule is refused."""
    request = circuit.CircuitRequest(task="ioi", n_pairs=3, ig_steps=2, sizes=(3, 30))  # EAP, RelP, EAP-IG
    pairs = list(_pairs_for(server_model))
    monkeypatch.setattr(circuit, "pairs_of", lambda model, request, settings: pairs)
    progress = []
    remote_result = circuit.run(SimpleNamespace(model=client_model, settings=settings), request,
                                lambda f, m: progress.append((f, m)))
    assert loopback and progress[-1][0] == pytest.approx(1.0, abs=0.01)
    monkeypatch.setattr(circuit, "_traced", lambda model: True)  # the same path on the local copy
    local_result = circuit.run(SimpleNamespace(model=server_model, settings=settings), request, lambda f, m: None)
    for field in ("edge_scores", "node_scores", "curves", "ld_clean", "ld_corrupted", "areas", "recovering"):
        assert np.array_equal(getattr(remote_result, field), getattr(local_result, field)), field
    assert "NDIF" in remote_result.rules
    assert len(loopback) == 3 + 3  # one attribution trace and one ablation trace per method
    with pytest.raises(BadRequest, match="AH rule"):
        circuit.run(SimpleNamespace(model=client_model, settings=settings),
                    circuit.CircuitRequest(task="ioi", n_pairs=3, ah_rule=True), lambda f, m: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_traced_equals_hook_based(workbench, settings, name):
    """On the real models and four IOI pairs the traces give the hook-based numbers (measured 2026-12-01:
    EAP and RelP identical to the last bit, EAP-IG within 1e-8 of the largest score, curves identical; both
    paths take 4-30 s on 2 shared cores)."""
    from workbench.prompt_pairs import ioi_pairs

    model = workbench.model(name)
    graph = graph_for(model)
    batch = encode_pairs(model, ioi_pairs(model, 4, 0, settings), settings)
    for method in ("atp", "relp", "ig"):
        local = ea.attribute_edges(model, batch, graph, method, steps=2)
        traced = ct.attribute_edges_traced(model, batch, graph, method, steps=2)
        _compare_attribution(local, traced, 1e-6)
    n = len(graph.edges)
    local = cr.faithfulness_curve(model, batch, graph, traced.edge_scores, [0, 100, n], max_rows=8)
    curve = ct.faithfulness_curve_traced(model, batch, graph, traced.edge_scores, [0, 100, n], max_rows=8)
    np.testing.assert_allclose(curve.metric, local.metric, atol=1e-5, rtol=0)
    assert curve.metric[0] == pytest.approx(0.0, abs=1e-4) and curve.metric[-1] == pytest.approx(1.0, abs=1e-4)
