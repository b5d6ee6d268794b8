"""Neuron classes, vocabulary projection, top contexts and the causal check, on tiny models.

Hand-built weights make every class appear where we put it; the sign normalisation must
leave the MLP function unchanged; the Beta null band must match sampled random cosines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from workbench import prompts, tracing
from workbench.analyses import neuron_classes as neurons
from workbench.analyses import neuron_contexts, neuron_effect, neuron_vocab
from workbench.analyses.neuron_classes import CLASS_ID, NeuronClassRequest
from workbench.errors import BadPrompt, BadRequest
from workbench.models import parts
from workbench.store import codec

PROMPT = "When Mary and John went to the store, John gave a drink to"
D = 64  # d_model of the tiny models

# (gate, in, out) as coordinates on three orthonormal directions, and the class each must get.
# Cosines: 0.6 counts as aligned (> 0.5), 0.28 and 0 as not.
HAND_BUILT = {
    "enrichment": ((1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "conditional enrichment": ((0, 1, 0), (1, 0, 0), (1, 0, 0)),
    "depletion": ((1, 0, 0), (1, 0, 0), (-1, 0, 0)),
    "conditional depletion": ((0, 1, 0), (1, 0, 0), (-1, 0, 0)),
    "proportional change": ((1, 0, 0), (0, 1, 0), (1, 0, 0)),
    "orthogonal output": ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
    # gate.in = -0.28 < 0: normalisation flips in/out, then (io, go, gi) = (1, -1, 0): atypical
    "atypical enrichment": ((0.6, -0.8, 0), (0.6, 0.8, 0), (1, 0, 0)),
    # (io, go, gi) = (1, 0, 1): typical needs gi == 0
    "atypical conditional enrichment": ((0.6, -0.8, 0), (1, 0, 0), (0.6, 0.8, 0)),
    # (io, go, gi) = (-1, 1, 0): typical needs gi == -1
    "atypical depletion": ((0.6, 0.8, 0), (-0.6, 0.8, 0), (1, 0, 0)),
    # (io, go, gi) = (-1, 0, 1)
    "atypical conditional depletion": ((0, 1, 0), (-0.6, 0.8, 0), (1, 0, 0)),
    # (io, go, gi) = (0, 1, 1)
    "atypical proportional change": ((0.6, 0.8, 0), (0, 1, 0), (1, 0, 0)),
}


def _embed(coords, basis: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * (torch.tensor(coords, dtype=torch.float32) @ basis)


def _random_basis(d: int, seed: int) -> torch.Tensor:
    """Three orthonormal rows in d dimensions, in a random orientation."""
    q, _ = torch.linalg.qr(torch.randn(d, 3, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def _hand_built_rows(d: int, seed: int = 0):
    basis = _random_basis(d, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    scale = lambda: float(torch.rand(1, generator=gen)) * 3 + 0.1  # noqa: E731  norms must not matter
    gate = torch.stack([_embed(g, basis, scale()) for g, _, _ in HAND_BUILT.values()])
    w_in = torch.stack([_embed(i, basis, scale()) for _, i, _ in HAND_BUILT.values()])
    w_out = torch.stack([_embed(o, basis, scale()) for _, _, o in HAND_BUILT.values()])
    return gate, w_in, w_out


def test_hand_built_weights_get_every_class():
    gate, w_in, w_out = _hand_built_rows(48)
    cos = neurons.layer_cosines(parts.MlpWeights(gate, w_in, w_out))
    got = [neurons.CLASS_NAMES[i] for i in cos.class_ids.tolist()]
    assert got == list(HAND_BUILT)
    assert set(got) == set(neurons.CLASS_NAMES)  # each class appears
    assert (cos.cos_gate_in >= 0).all()
    assert cos.flipped[list(HAND_BUILT).index("atypical enrichment")]  # gate.in = -0.28 < 0
    assert not cos.flipped[list(HAND_BUILT).index("enrichment")]


def test_non_gated_classes():
    basis = _random_basis(32, 3)
    w_in = torch.stack([basis[0], basis[0], basis[0]])
    w_out = torch.stack([2 * basis[0], -0.5 * basis[0], basis[1]])
    cos = neurons.layer_cosines(parts.MlpWeights(None, w_in, w_out))
    assert cos.class_ids.tolist() == [CLASS_ID["enrichment"], CLASS_ID["depletion"], CLASS_ID["orthogonal output"]]


def test_approx_thresholds():
    values = torch.tensor([-1.0, -0.51, -0.5, 0.0, 0.5, 0.51, 1.0])
    assert neurons.approx(values).tolist() == [-1, -1, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_hand_built_neurons_in_a_model(workbench, tiny_dirs, arch, tmp_path):
    """Written into layer 1 through the adapter's views, classified by the service."""
    from tests.tiny_models import build_model_dir

    directory = build_model_dir(arch, tmp_path / arch)
    model = workbench.model(str(directory))
    gate, w_in, w_out = _hand_built_rows(D, seed=5)
    views = parts.mlp_weights(model.spec, model.hf_model, 1)
    with torch.no_grad():
        views.w_gate[: len(HAND_BUILT)] = gate
        views.w_in[: len(HAND_BUILT)] = w_in
        views.w_out[: len(HAND_BUILT)] = w_out
    result = workbench.neuron_classes(str(directory), NeuronClassRequest())
    got = [neurons.CLASS_NAMES[i] for i in result.class_ids[1, : len(HAND_BUILT)]]
    assert got == list(HAND_BUILT)
    np.testing.assert_allclose(result.fractions.sum(axis=1), 1.0, atol=1e-12)
    assert (result.cos_gate_in >= 0).all()
    assert result.class_ids.shape == (3, 128) and result.gated


def test_gpt2_conv1d_orientation(workbench, tiny_dirs, tmp_path):
    from tests.tiny_models import build_model_dir

    directory = build_model_dir("gpt2", tmp_path / "gpt2")
    model = workbench.model(str(directory))
    views = parts.mlp_weights(model.spec, model.hf_model, 0)
    assert views.w_gate is None and views.w_in.shape == views.w_out.shape == (4 * D, D)
    direction = _random_basis(D, 9)
    with torch.no_grad():
        views.w_in[0], views.w_out[0] = direction[0], 3 * direction[0]
        views.w_in[1], views.w_out[1] = direction[0], -direction[0]
        views.w_in[2], views.w_out[2] = direction[0], direction[1]
    # the view really is the module's weight: the fc output of a unit input along direction 0
    fc = model.hf_model.get_submodule(f"{model.spec.layers}.0.{model.spec.mlp}.{model.spec.mlp_in}")
    with torch.no_grad():
        out = fc(direction[0][None]) - fc(torch.zeros(1, D))
    assert float(out[0, 0]) == pytest.approx(1.0, abs=1e-5)
    result = workbench.neuron_classes(str(directory), NeuronClassRequest())
    assert not result.gated and result.cos_gate_out.shape == (0, 0)
    assert result.class_ids[0, :3].tolist() == [CLASS_ID["enrichment"], CLASS_ID["depletion"],
                                                  CLASS_ID["orthogonal output"]]
    assert result.cos_in_out[0, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_sign_normalisation_keeps_the_mlp_function(workbench, tiny_dirs, arch):
    """Flipping w_in and w_out together (what the normalisation does) leaves the MLP output
    unchanged for SiLU and gelu-tanh; flipping w_gate and w_in together would not."""
    model = workbench.model(str(tiny_dirs[arch]))
    mlp = model.hf_model.get_submodule(f"{model.spec.layers}.1.{model.spec.mlp}")
    views = parts.mlp_weights(model.spec, model.hf_model, 1)
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(0))
    saved = [v.clone() for v in (views.w_gate, views.w_in, views.w_out)]
    try:
        with torch.no_grad():
            before = mlp(x)
            w_in, w_out, flipped = neurons.sign_normalise(views.w_gate, views.w_in, views.w_out)
            assert 0 < int(flipped.sum()) < len(flipped)  # random weights: some neurons flip
            views.w_in.copy_(w_in)
            views.w_out.copy_(w_out)
            torch.testing.assert_close(mlp(x), before, rtol=0, atol=1e-5)
            assert (neurons.row_cosines(views.w_gate, views.w_in) >= 0).all()
            views.w_gate[flipped] *= -1  # the other pairing: gate and in
            views.w_out[flipped] *= -1
            assert not torch.allclose(mlp(x), before, atol=1e-3)
    finally:
        with torch.no_grad():
            for view, value in zip((views.w_gate, views.w_in, views.w_out), saved, strict=True):
                view.copy_(value)


@pytest.mark.parametrize("d", [64, 576])
def test_null_band_matches_sampled_random_cosines(d):
    gen = torch.Generator().manual_seed(d)
    a, b = torch.randn(20000, d, generator=gen), torch.randn(20000, d, generator=gen)
    cos = neurons.row_cosines(a, b).numpy()
    band = neurons.null_band(d, 0.99)
    outside = float(((cos < band[0]) | (cos > band[1])).mean())
    assert outside == pytest.approx(0.01, abs=0.004)  # binomial sd 0.0007
    assert stats.kstest(cos, lambda c: neurons.null_cdf(d, c)).pvalue > 1e-3
    assert band[1] == pytest.approx(-band[0]) and band[1] == pytest.approx(2.576 / np.sqrt(d), rel=0.02)


def test_fold_norm_changes_cosines_and_caches(workbench, tiny_dirs):
    name = str(tiny_dirs["gemma3_text"])
    plain = workbench.neuron_classes(name, NeuronClassRequest())
    folded = workbench.neuron_classes(name, NeuronClassRequest(fold_norm=True))
    assert folded.fold_norm and not plain.fold_norm
    assert not np.allclose(plain.cos_in_out, folded.cos_in_out)
    # folding by hand: the pre-MLP norm's scale (1 + weight for Gemma) on the in/gate columns
    model = workbench.model(name)
    pre, _ = parts.mlp_norm_scales(model.spec, model.hf_model, 0)
    w = parts.mlp_weights(model.spec, model.hf_model, 0)
    expected = neurons.layer_cosines(parts.MlpWeights(w.w_gate * pre, w.w_in * pre, w.w_out))
    np.testing.assert_allclose(folded.cos_in_out[0], expected.cos_in_out.numpy(), atol=1e-6)
    again = workbench.neuron_classes(name, NeuronClassRequest(fold_norm=True))
    assert codec.same_result(again, folded)
    assert workbench.store.count_results(neurons.NAME) == 2


def test_bad_requests():
    with pytest.raises(BadRequest):
        NeuronClassRequest(null_coverage=1.5)
    with pytest.raises(BadRequest):
        neuron_effect.NeuronEffectRequest("x", 0, 0, factor=1e6)
    with pytest.raises(BadRequest):
        neuron_vocab.NeuronVocabRequest(0, 0, top_k=0)


def test_vocab_projection_and_token_search(workbench, tiny_dirs, tmp_path):
    from tests.tiny_models import build_model_dir

    directory = build_model_dir("llama", tmp_path / "llama")
    model = workbench.model(str(directory))
    paris = prompts.single_token_id(model, " Paris")
    w_u = parts.unembedding_matrix(model.spec, model.hf_model)
    views = parts.mlp_weights(model.spec, model.hf_model, 2)
    with torch.no_grad():
        views.w_out[17] = w_u[paris] * 0.3
        views.w_gate[17] = views.w_in[17]  # cos(gate, in) = 1: no flip
    result = workbench.neuron_vocab(str(directory), neuron_vocab.NeuronVocabRequest(2, 17, top_k=5))
    assert not result.flipped
    assert result.out_top_tokens[0] == " Paris"
    scores = w_u @ views.w_in[17]
    expected = [model.tokenizer.decode([int(i)]) for i in scores.topk(5).indices]
    assert result.in_top_tokens.tolist() == expected
    np.testing.assert_allclose(result.in_top_values, scores.topk(5).values.detach().numpy(), rtol=1e-5)
    assert (np.diff(result.out_top_values) <= 0).all() and (np.diff(result.out_bottom_values) >= 0).all()
    hits = workbench.neuron_search_token(str(directory), " Paris", limit=3)
    assert hits[0][:2] == (2, 17) and hits[0][2] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(BadRequest, match="neurons 0..127"):
        workbench.neuron_vocab(str(directory), neuron_vocab.NeuronVocabRequest(0, 128))


def _reference_run(model, ids, layer, neuron, factor):
    """Plain torch: a pre-hook on the output projection scales one input column."""
    out_proj = model.hf_model.get_submodule(f"{model.spec.layers}.{layer}.{model.spec.mlp}.{model.spec.mlp_out}")
    seen = {}

    def hook(_module, args):
        (x,) = args
        seen["act"] = x[0, :, neuron].clone()
        x = x.clone()
        x[..., neuron] *= factor
        return (x,)

    handle = out_proj.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            logits = model.hf_model(ids.unsqueeze(0)).logits[0, -1]
    finally:
        handle.remove()
    return logits, seen["act"]


@pytest.mark.parametrize("factor", [0.0, 3.0])
def test_scale_neuron_matches_a_torch_hook(workbench, tiny_dir, factor):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    scaled = tracing.scale_neuron(model, ids, 1, 5, factor)
    ref_logits, ref_act = _reference_run(model, ids, 1, 5, factor)
    torch.testing.assert_close(scaled.logits, ref_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(scaled.activation, ref_act, rtol=0, atol=1e-6)
    clean = tracing.scale_neuron(model, ids, 1, 5, 1.0)
    torch.testing.assert_close(clean.logits, tracing.forward_logits(model, ids)[-1], rtol=0, atol=1e-5)
    assert not torch.allclose(scaled.logits, clean.logits, atol=1e-7)


def test_neuron_effect_result(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    same = workbench.neuron_effect(name, neuron_effect.NeuronEffectRequest(PROMPT, 2, 7, factor=1.0))
    assert same.kl == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(same.clean_top_probs, same.clean_top_scaled_probs)
    ablated = workbench.neuron_effect(name, neuron_effect.NeuronEffectRequest(PROMPT, 2, 7, factor=0.0))
    model = workbench.model(name)
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    ref_logits, ref_act = _reference_run(model, ids, 2, 7, 0.0)
    ref = torch.softmax(ref_logits.double(), -1)
    clean = torch.softmax(tracing.forward_logits(model, ids)[-1].double(), -1)
    assert ablated.kl == pytest.approx(float((clean * (clean.log() - ref.log())).sum()), abs=1e-9)
    assert ablated.kl > 0
    np.testing.assert_allclose(ablated.activation, ref_act.numpy(), atol=1e-6)
    assert ablated.scaled_top_probs[0] == pytest.approx(float(ref.max()), abs=1e-9)
    with pytest.raises(BadPrompt):
        workbench.neuron_effect(name, neuron_effect.NeuronEffectRequest("  ", 0, 0))
    with pytest.raises(BadRequest, match="layers 0..2"):
        workbench.neuron_effect(name, neuron_effect.NeuronEffectRequest(PROMPT, 3, 0))


def test_mlp_activations_match_the_hook(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    acts = tracing.mlp_activations(model, torch.stack([ids, ids.flip(0)]))
    assert acts.shape[:3] == (model.info.n_layers, 2, len(ids))
    _, ref = _reference_run(model, ids, 2, 11, 1.0)
    torch.testing.assert_close(acts[2, 0, :, 11], ref, rtol=0, atol=1e-5)


def test_top_contexts_are_the_true_maxima(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["gemma3_text"]))  # prefixes <bos> to every chunk
    text = "\n".join(neuron_contexts.corpus_text().splitlines()[:20])
    request = neuron_contexts.NeuronContextsRequest(neuron_contexts.corpus_digest(text), chunk_tokens=16,
                                                    top_k=4, batch_size=3)
    result = neuron_contexts.compute(model, request, text)
    chunks = neuron_contexts.corpus_chunks(model, text, 16)
    prefix = list(model.tokenizer("").input_ids)
    stream = model.tokenizer(text, add_special_tokens=False).input_ids
    assert chunks.shape == (len(stream) // (16 - len(prefix)), 16)
    assert chunks[:, len(prefix):].flatten().tolist() == stream[: chunks.shape[0] * (16 - len(prefix))]
    acts = tracing.mlp_activations(model, chunks)  # (layer, chunks, seq, neurons), all at once
    acts[:, :, : neuron_contexts.SKIPPED_POSITIONS] = 0.0  # the sink position never counts
    flat = acts.reshape(acts.shape[0], -1, acts.shape[-1])
    top = flat.abs().topk(4, dim=1)  # strongest contexts of either sign, signed values kept
    expected = flat.gather(1, top.indices)
    np.testing.assert_allclose(result.top_values, expected.transpose(1, 2).numpy(), atol=1e-6)
    assert (result.top_values < 0).any() and (result.top_values > 0).any()
    assert (result.top_position >= neuron_contexts.SKIPPED_POSITIONS).all()
    layer, neuron = 1, 9
    for value, chunk, pos in zip(result.top_values[layer, neuron], result.top_chunk[layer, neuron],
                                 result.top_position[layer, neuron], strict=True):
        assert float(acts[layer, chunk, pos, neuron]) == pytest.approx(float(value), abs=1e-6)
    rows = neuron_contexts.contexts_of(result, layer, neuron)
    assert rows[0][2] == result.chunk_tokens[result.top_chunk[layer, neuron, 0], result.top_position[layer, neuron, 0]]
    with pytest.raises(BadRequest, match="corpus_digest"):
        neuron_contexts.compute(model, request, text + "x")


def test_bundled_corpus_contexts_are_cached(workbench, tiny_dirs):
    name = str(tiny_dirs["gpt2"])
    first = workbench.neuron_contexts(name)
    assert first.chunk_tokens.shape[1] == neuron_contexts.MAX_CHUNK_TOKENS
    assert (np.diff(np.abs(first.top_values), axis=-1) <= 0).all()
    assert codec.same_result(workbench.neuron_contexts(name), first)
    assert workbench.store.count_results(neuron_contexts.NAME) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_classes(workbench, name):
    result = workbench.neuron_classes(name, NeuronClassRequest())
    n_layers = {"smollm2-135m": 30, "gemma3-270m": 18}[name]
    assert result.class_ids.shape[0] == n_layers and result.gated
    np.testing.assert_allclose(result.fractions.sum(axis=1), 1.0, atol=1e-12)
    # trained weights are far from random: many more neurons outside the 99% null band than 1%
    assert result.outside_null.mean() > 0.05


def test_layer_cosines_equal_the_explicit_normalisation():
    """The fast path (unit rows, sign applied to the cosines) equals flipping the weights first."""
    gen = torch.Generator().manual_seed(4)
    gate, w_in, w_out = (torch.randn(300, 40, generator=gen) for _ in range(3))
    fast = neurons.layer_cosines(parts.MlpWeights(gate, w_in, w_out))
    flipped_in, flipped_out, flipped = neurons.sign_normalise(gate, w_in, w_out)
    assert torch.equal(fast.flipped, flipped)
    for got, a, b in [(fast.cos_in_out, flipped_in, flipped_out), (fast.cos_gate_out, gate, flipped_out),
                      (fast.cos_gate_in, gate, flipped_in)]:
        torch.testing.assert_close(got.double(), neurons.row_cosines(a, b), atol=1e-6, rtol=0)
