"""The invariant matrix on every family beyond the ``tiny_dir`` fixture's four (issue #16).

GPT-NeoX / Pythia, Phi and GPT-J (parallel blocks), Gemma 2 (soft-capped attention and logits),
OLMo 2 (norms after the sublayers), Phi-3 (fused qkv and gate/up projections), Mistral and Qwen3
(the Llama row): each as a tiny random model (``tests.tiny_models.MATRIX_ARCHITECTURES``, built
here, no download), each checked for

* the logit lens at the last slot equals the model's logits (and the in-trace lens agrees);
* patching clean into clean changes nothing, at every site, block and head;
* fast activation patching equals the plain implementation (float64, 1e-5 in ``m``);
* the RelP rules leave the logits unchanged and conserve relevance block by block;
* attention rows sum to one (sinks), and the MLP write the sink probe reads is the real one;
* skipping no block gives KL 0 (depth use), and the sublayer split is the sublayer outputs;
* neuron sign normalisation leaves the MLP unchanged, and the weight rows are the MLP's;

plus what is particular to a family (the soft-caps bite and every decode applies the final one,
GPT-NeoX's topology switch, refusals with their messages). Kept out of ``tiny_dir`` on purpose:
that fixture parametrises hundreds of tests.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from tests.tiny_models import MATRIX_ARCHITECTURES, SEQ2SEQ_ARCHITECTURES, build_model_dir, build_seq2seq_model
from workbench import interventions, patching_runs, prompt_pairs, prompts, tracing
from workbench.analyses import activation_patching, depth_use, logit_lens, patching
from workbench.analyses import neuron_classes as neurons
from workbench.analyses.activation_patching import COMPONENTS, ActivationPatchingRequest
from workbench.analyses.depth_use import DepthUseRequest
from workbench.analyses.neuron_classes import NeuronClassRequest
from workbench.analyses.neuron_vocab import NeuronVocabRequest
from workbench.errors import BadRequest, UnsupportedArchitecture
from workbench.interventions import HEADS, SITES, Rules
from workbench.lenses import soft_cap
from workbench.models import adapter, parts

PROMPT = "When Mary and John went to the store, John gave a drink to"
# 10 tokens (patching costs grow with the square of the length): longer than Gemma 2's and Mistral's
# sliding windows of 8, so the fast path's windowed masks are exercised too
PAIR = prompt_pairs.ioi_pair("When {io} and {s} went, {s} gave a drink to", "Mary", "John")
ALL_RULES = Rules(ln=True, identity=True, half=True, attention=True)
PARALLEL = {"gpt_neox", "phi", "gptj"}
GATED = {"gemma2", "olmo2", "phi3", "mistral", "qwen3"}
# Norms applied to a sublayer's OUTPUT before the residual add: attention write, MLP write
POST_NORMS = {"gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
              "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm")}


@pytest.fixture(params=MATRIX_ARCHITECTURES)
def arch(request):
    return request.param


@pytest.fixture
def model(workbench, arch_dirs, arch):
    return workbench.model(str(arch_dirs(arch)))


def _ids(workbench, model):
    return prompts.encode(model, PROMPT, workbench.settings).ids


def _hooked_outputs(model, ids, paths: list[str]) -> list[torch.Tensor]:
    """Plain forward hooks (no nnsight) on the given module paths: each one's output[0] (seq, d)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        def hook(_m, _a, out, path=path):
            captured[path] = (out[0] if isinstance(out, tuple) else out)[0].detach().float()
        handles.append(model.module(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.hf_model(ids.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return [captured[path] for path in paths]


def _writes(model, arch: str, ids) -> tuple[list, list]:
    """What each block's attention and MLP add to the residual, read with plain hooks."""
    spec = model.spec
    attn_name, mlp_name = POST_NORMS.get(arch, (spec.attn, spec.mlp))
    n = model.info.n_layers
    paths = [f"{spec.layers}.{layer}.{name}" for name in (attn_name, mlp_name) for layer in range(n)]
    outs = _hooked_outputs(model, ids, paths)
    return outs[:n], outs[n:]


# ---------------------------------------------------------------------- the adapter rows


def test_each_family_gets_its_row_and_topology(model, arch):
    expected = {"gpt_neox": "gpt_neox", "gemma2": "gemma2", "olmo2": "olmo2", "phi": "phi", "phi3": "phi3",
                "gptj": "gptj", "mistral": "llama", "qwen3": "llama"}
    assert model.spec.family == expected[arch]
    assert model.spec.parallel == (arch in PARALLEL)
    assert model.spec.gated == (arch in GATED)
    assert model.info.n_layers == 3 and model.info.d_model == 64 and model.info.n_heads == 4
    assert model.info.vocab_size == model.hf_model.config.vocab_size


# ---------------------------------------------------------------------- logit lens


def test_logit_lens_at_the_last_slot_equals_the_logits(workbench, model):
    ids = _ids(workbench, model)
    trace = tracing.residual_stream(model, ids)
    assert trace.resid.shape == (model.info.n_layers + 1, len(ids), model.info.d_model)
    torch.testing.assert_close(trace.logits, tracing.forward_logits(model, ids), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.decode(trace.resid[-1]), trace.logits, rtol=0, atol=1e-5)
    # the in-trace lens (top-k, KL, target) agrees with decoding the recorded stream
    target = prompts.single_token_id(model, " Mary")
    logprobs = torch.log_softmax(model.decode(trace.resid).double(), -1)
    lens = logit_lens.lens_statistics(model, ids, 4, target, budget_bytes=1 << 40)
    torch.testing.assert_close(lens.top_logprobs.double(), logprobs.topk(4, -1).values, rtol=0, atol=1e-5)
    torch.testing.assert_close(lens.target_logprob.double(), logprobs[:, -1, target], rtol=0, atol=1e-5)
    assert torch.equal(lens.kl_to_final[-1], torch.zeros(len(ids)))
    assert lens.kl_to_final[:-1].max() > 1e-4  # earlier slots do differ: the lens decodes something


# ---------------------------------------------------------------------- patching


def test_patching_clean_into_clean_is_zero(workbench, model):
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    clean_acts, clean_logits = interventions.record(model, pair.clean_ids, (*SITES, HEADS))
    for layer in range(model.info.n_layers):
        for site in SITES:
            logits = interventions.patch_positions(model, pair.clean_ids, clean_acts[(site, layer)], layer, site)
            torch.testing.assert_close(logits, clean_logits.expand_as(logits), rtol=0, atol=1e-5)
        heads = interventions.patch_heads(model, pair.clean_ids, clean_acts[(HEADS, layer)], layer)
        assert heads.shape == (model.info.n_heads, model.info.vocab_size)
        torch.testing.assert_close(heads, clean_logits.expand_as(heads), rtol=0, atol=1e-5)


def _activation(workbench, model, fast: bool):
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    request = ActivationPatchingRequest(PAIR.clean, PAIR.corrupted, PAIR.answer, PAIR.wrong)
    return activation_patching.compute_activation(
        model, pair.clean_ids, pair.corrupted_ids, pair.answer_id, pair.wrong_id, request, fast=fast
    )


def test_fast_activation_patching_equals_the_plain_one(workbench, model, monkeypatch):
    """In float64 (see tests/test_fast_patching.py for why); the fast path must not fall back."""
    assert patching_runs.supports(model)
    model.hf_model.double()
    try:
        plain = _activation(workbench, model, fast=False)
        with monkeypatch.context() as patch, warnings.catch_warnings():
            warnings.simplefilter("error")
            patch.setattr(activation_patching, "_activation_patching", _no_plain)
            fast = _activation(workbench, model, fast=True)
    finally:
        model.hf_model.float()
    for component in COMPONENTS:
        np.testing.assert_allclose(fast.scores(component), plain.scores(component), rtol=0, atol=1e-5,
                                   err_msg=component)
    assert np.abs(plain.act_resid).max() > 0.5 and np.abs(plain.act_heads).max() > 1e-3  # patches did something


def _no_plain(*args, **kwargs):
    raise AssertionError("the fast path fell back to the plain one")


def test_relp_leaves_logits_unchanged_and_conserves_relevance(workbench, model):
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    _, logits = interventions.record(model, pair.clean_ids, ())
    for rules in (Rules(ln=True), Rules(attention=True), ALL_RULES):  # the two that differ by family, then all
        grad_pass = interventions.gradient_pass(model, pair.clean_ids, lambda lg: lg[0] - lg[1], SITES, rules)
        assert (grad_pass.logits - logits).abs().max() < 1e-5, rules
    _, after = interventions.record(model, pair.clean_ids, ())
    assert torch.equal(after, logits)  # every hook and attention swap undone
    metric = patching.metric_fn(pair.answer_id, pair.wrong_id, ld_corrupted=0.3, ld_clean=1.3)
    grad_pass = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, ALL_RULES)
    for layer in range(model.info.n_layers):
        resid = (grad_pass.values[("resid", layer)].double() * grad_pass.grads[("resid", layer)].double()).sum()
        with_bias = float(resid) + float(grad_pass.bias_relevance[layer:].sum())
        assert with_bias == pytest.approx(grad_pass.output_relevance, rel=1e-4, abs=1e-6), layer
    plain = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, Rules())
    gaps = [float((plain.values[("resid", i)].double() * plain.grads[("resid", i)].double()).sum())
            + float(plain.bias_relevance[i:].sum()) - plain.output_relevance for i in range(model.info.n_layers)]
    assert max(abs(g) for g in gaps) > 1e-4  # without the rules it does not: the check can fail


# ---------------------------------------------------------------------- attention sinks, depth use


def test_attention_rows_sum_to_one_and_the_mlp_write_is_real(workbench, model, arch, arch_dirs):
    ids = _ids(workbench, model)
    trace = tracing.attention_and_states(model, ids)
    seq = len(ids)
    assert trace.attn.shape == (model.info.n_layers, model.info.n_heads, seq, seq)
    torch.testing.assert_close(trace.attn.sum(-1), torch.ones(trace.attn.shape[:-1]), rtol=0, atol=1e-5)
    assert (trace.attn >= 0).all() and trace.attn.triu(diagonal=1).abs().max() == 0.0
    _, mlp_writes = _writes(model, arch, ids)
    for layer, write in enumerate(mlp_writes):
        torch.testing.assert_close(trace.mlp_write[layer], write, rtol=0, atol=1e-5)
    result = workbench.attention_sinks(str(arch_dirs(arch)), _sink_request())
    assert result.sink_scores.shape == (model.info.n_layers, model.info.n_heads, seq)


def _sink_request():
    from workbench.analyses.attention_sinks import SinkProbeRequest

    return SinkProbeRequest(prompt=PROMPT)


def test_skipping_no_block_gives_kl_zero_and_the_split_is_exact(workbench, model, arch, arch_dirs):
    ids = _ids(workbench, model)
    clean = tracing.residual_stream(model, ids)
    resid, logits = tracing.skip_layers(model, ids, [None, 1])
    torch.testing.assert_close(resid[0], clean.resid, rtol=0, atol=1e-5)
    assert depth_use.kl_from_logits(clean.logits, logits[0]).max() < 1e-9
    assert depth_use.kl_from_logits(clean.logits, logits[1]).max() > 1e-6  # skipping block 1 does change it
    # attention's and the MLP's contributions are what they add to the residual
    split = tracing.sublayer_stream(model, ids)
    assert split.parallel == (arch in PARALLEL)
    attn_writes, mlp_writes = _writes(model, arch, ids)
    for layer in range(model.info.n_layers):
        torch.testing.assert_close(split.resid_mid[layer] - split.resid_in[layer], attn_writes[layer],
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(split.resid_out[layer] - split.resid_mid[layer], mlp_writes[layer],
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(split.resid_in[1:], split.resid_out[:-1], rtol=0, atol=0)
    result = workbench.depth_use(str(arch_dirs(arch)), DepthUseRequest(PROMPT))
    pos = slice(1, len(ids))
    mlp = (split.resid_out - split.resid_mid)[:, pos]
    reads = split.resid_in if arch in PARALLEL else split.resid_mid  # parallel: the MLP reads the block input
    expected = (mlp.norm(dim=-1) / reads[:, pos].norm(dim=-1)).mean(-1).numpy()
    np.testing.assert_allclose(result.mlp_rel_norm, expected, rtol=1e-5)


# ---------------------------------------------------------------------- neurons


def test_weight_rows_are_the_mlp(model, arch):
    """``parts.mlp_weights`` (Phi-3: the fused gate_up split in two) rebuilds the MLP's output."""
    spec, layer = model.spec, 1
    mlp = model.module(f"{spec.layers}.{layer}.{spec.mlp}")
    act = mlp.get_submodule(spec.mlp_act)
    rows = parts.mlp_weights(spec, model.hf_model, layer)
    x = torch.randn(5, model.info.d_model, generator=torch.Generator().manual_seed(1))

    def bias(path):
        b = getattr(mlp.get_submodule(path), "bias", None)
        return 0.0 if b is None else b.detach()

    with torch.no_grad():
        if rows.w_gate is not None:
            hidden = act(x @ rows.w_gate.T) * (x @ rows.w_in.T)
        else:
            hidden = act(x @ rows.w_in.T + bias(spec.mlp_in))
        rebuilt = hidden @ rows.w_out + bias(spec.mlp_out)
        torch.testing.assert_close(rebuilt, mlp(x), rtol=0, atol=1e-5)


def test_sign_normalisation_leaves_the_mlp_unchanged(workbench, model, arch, arch_dirs):
    spec = model.spec
    mlp = model.module(f"{spec.layers}.1.{spec.mlp}")
    views = parts.mlp_weights(spec, model.hf_model, 1)
    x = torch.randn(7, model.info.d_model, generator=torch.Generator().manual_seed(0))
    result = workbench.neuron_classes(str(arch_dirs(arch)), NeuronClassRequest())
    assert result.gated == (arch in GATED)
    if not spec.gated:  # non-gated MLPs: nothing to normalise, the three non-gated classes only
        assert result.flipped.shape == (0, 0) and result.cos_gate_out.shape == (0, 0)
        assert set(np.unique(result.class_ids)) <= {neurons.CLASS_ID[c] for c in
                                                    ("enrichment", "depletion", "orthogonal output")}
        return
    saved = [v.clone() for v in (views.w_gate, views.w_in, views.w_out)]
    try:
        with torch.no_grad():
            before = mlp(x)
            w_in, w_out, flipped = neurons.sign_normalise(views.w_gate, views.w_in, views.w_out)
            assert 0 < int(flipped.sum()) < len(flipped)
            assert np.array_equal(result.flipped[1], flipped.numpy())
            views.w_in.copy_(w_in)
            views.w_out.copy_(w_out)
            torch.testing.assert_close(mlp(x), before, rtol=0, atol=1e-5)
            views.w_gate[flipped] *= -1  # the other pairing (gate with in) does change it
            views.w_out[flipped] *= -1
            assert not torch.allclose(mlp(x), before, atol=1e-3)
    finally:
        with torch.no_grad():
            for view, value in zip((views.w_gate, views.w_in, views.w_out), saved, strict=True):
                view.copy_(value)


def test_fold_norm_without_a_norm_before_the_mlp_is_refused(workbench, arch_dirs):
    """OLMo 2's MLP reads the residual itself: folding "the preceding norm" would fold nothing."""
    name = str(arch_dirs("olmo2"))
    with pytest.raises(BadRequest, match=r"no norm to fold.*\(olmo2\).*reads the residual stream directly"):
        workbench.neuron_classes(name, NeuronClassRequest(fold_norm=True))
    with pytest.raises(BadRequest, match="no norm to fold"):
        workbench.neuron_vocab(name, NeuronVocabRequest(layer=0, neuron=3, fold_norm=True))
    assert workbench.neuron_classes(name, NeuronClassRequest()).class_ids.shape == (3, 128)
    # Phi's shared layernorm is the MLP's norm: folding it changes the cosines
    phi = str(arch_dirs("phi"))
    folded = workbench.neuron_classes(phi, NeuronClassRequest(fold_norm=True))
    assert np.abs(folded.cos_in_out - workbench.neuron_classes(phi, NeuronClassRequest()).cos_in_out).max() > 1e-3


def test_mlp_input_site_is_what_the_mlp_reads(workbench, model):
    """Concept depth's "mlp_input": the pre-MLP norm's output (parallel blocks too), the raw residual
    in OLMo 2; checked against a hook on the MLP's input."""
    ids = _ids(workbench, model)
    states = tracing.last_token_states(model, [ids.tolist()], "mlp_input")  # (block, 1, d)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(model.info.n_layers):
        def hook(_m, args, layer=layer):
            captured[layer] = args[0][0, -1].detach()
        handles.append(model.module(f"{model.spec.layers}.{layer}.{model.spec.mlp}").register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model.hf_model(ids.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(model.info.n_layers):
        torch.testing.assert_close(states[layer, 0], captured[layer], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- family specifics


def test_gemma2_soft_caps_bite_and_every_decode_applies_the_final_one(workbench, arch_dirs, tmp_path):
    model = workbench.model(str(arch_dirs("gemma2")))
    cap = model.info.logit_softcap
    assert cap == 0.5
    ids = _ids(workbench, model)
    trace = tracing.residual_stream(model, ids)
    raw = torch.nn.functional.linear(model.module(model.spec.final_norm)(trace.resid[-1]),
                                     model.module(model.spec.unembed).weight).detach()
    assert raw.abs().max() > cap  # the cap bites on this model
    torch.testing.assert_close(trace.logits, soft_cap(raw, cap), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.decode(trace.resid[-1]), trace.logits, rtol=0, atol=1e-6)  # lenses.Unembed
    assert (model.decode(trace.resid).abs() < cap).all()  # every slot of the lens is capped
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    grad_pass = interventions.gradient_pass(model, pair.clean_ids, lambda lg: lg[0], (), Rules())  # RelP/AtP
    torch.testing.assert_close(grad_pass.logits, tracing.forward_logits(model, pair.clean_ids)[-1], rtol=0,
                               atol=1e-6)
    final = trace.resid[-1][-1:].to(model.device)  # the fast path's decode of two logits
    target = patching_runs.Target(int(ids[1]), int(ids[2]), 0.0, 0.0)
    ld = patching_runs._logit_diffs(model, model.module(model.spec.final_norm)(final), target)
    assert float(ld[0].detach()) == pytest.approx(float(trace.logits[-1, ids[1]] - trace.logits[-1, ids[2]]), abs=1e-6)
    # the attention soft-cap changes the model too (so the AH rule's handling of it is tested above)
    config = json.loads((arch_dirs("gemma2") / "config.json").read_text())
    uncapped_dir = tmp_path / "gemma2_no_attn_cap"
    build_model_dir("gemma2", uncapped_dir)
    config["attn_logit_softcapping"] = None
    (uncapped_dir / "config.json").write_text(json.dumps(config))
    uncapped = workbench.model(str(uncapped_dir))
    assert (tracing.forward_logits(uncapped, ids) - trace.logits).abs().max() > 1e-4


def test_gpt_neox_topology_follows_use_parallel_residual(workbench, arch_dirs, tmp_path):
    config = json.loads((arch_dirs("gpt_neox") / "config.json").read_text())
    assert config["use_parallel_residual"] is True
    directory = build_model_dir("gpt_neox", tmp_path / "neox_sequential")
    config["use_parallel_residual"] = False
    (directory / "config.json").write_text(json.dumps(config))
    model = workbench.model(str(directory))
    assert model.spec.sequential and model.spec.family == "gpt_neox"
    assert model.spec.rename_table()["post_attention_layernorm"] == "pre_mlp_norm"
    ids = _ids(workbench, model)
    split = tracing.sublayer_stream(model, ids)  # a real resid_mid now: attention's output added before the MLP
    attn_writes = _hooked_outputs(model, ids, [f"{model.spec.layers}.{i}.attention" for i in range(3)])
    for layer in range(3):
        torch.testing.assert_close(split.resid_mid[layer] - split.resid_in[layer], attn_writes[layer],
                                   rtol=0, atol=1e-5)
    parallel = workbench.model(str(arch_dirs("gpt_neox")))
    assert (tracing.forward_logits(parallel, ids) - tracing.forward_logits(model, ids)).abs().max() > 1e-4


def test_parallel_blocks_with_post_norms_are_refused(workbench, arch_dirs):
    """No family has one, but a row that declared it would make the split's attention write wrong."""
    model = workbench.model(str(arch_dirs("phi")))
    spec = model.spec
    try:
        model.spec = dataclasses.replace(spec, mlp_post_norm="input_layernorm")
        with pytest.raises(UnsupportedArchitecture, match=r"resid_mid.*'phi'.*parallel"):
            tracing.sublayer_stream(model, _ids(workbench, model))
    finally:
        model.spec = spec


def test_spec_for_config_reads_the_switch():
    from transformers import GPTNeoXConfig, PhiConfig

    assert adapter.spec_for_config(GPTNeoXConfig(use_parallel_residual=True)).parallel
    assert adapter.spec_for_config(GPTNeoXConfig(use_parallel_residual=False)).sequential
    assert adapter.spec_for_config(PhiConfig()).parallel  # no switch: the row's topology


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_encoder_decoder_models_are_refused_by_name(workbench, tmp_path, model_type):
    from transformers import BartConfig, T5Config

    config = (T5Config if model_type == "t5" else BartConfig)(d_model=32, vocab_size=50)
    config.save_pretrained(tmp_path / model_type)
    with pytest.raises(UnsupportedArchitecture, match=rf"'{model_type}' is an encoder-decoder model.*refused"):
        workbench.model(str(tmp_path / model_type))


def test_unknown_architecture_names_what_is_missing_and_the_file(workbench, tmp_path):
    from transformers import MambaConfig

    MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50).save_pretrained(tmp_path / "mamba")
    expected = (r"Architecture 'mamba' is not supported yet \(supported model types: .*gpt_neox.*\)\. What is "
                r"missing is its ArchitectureSpec row: .*workbench/models/adapter\.py \(the one file to edit\)")
    with pytest.raises(UnsupportedArchitecture, match=expected):
        workbench.model(str(tmp_path / "mamba"))


def test_a_row_whose_modules_are_missing_names_them(arch_dirs, workbench):
    model = workbench.model(str(arch_dirs("gptj")))
    broken = dataclasses.replace(model.spec, attn_core="_no_such_core", mlp_in="fc_up")
    with pytest.raises(UnsupportedArchitecture, match=r"mlp_in \(transformer\.h\.0\.mlp\.fc_up\).*attn_core"):
        adapter.validate(broken, model.hf_model, "gptj")
    adapter.validate(model.spec, model.hf_model, "gptj")  # the real row passes


# ---------------------------------------------------------------------- encoder-decoder rows (T5, BART)


def _last_block_outputs(hf_model, spec, ids) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The last encoder and decoder blocks' outputs (plain hooks), and the model's output."""
    captured = {}
    handles = []
    for stack in (spec.encoder, spec.decoder):
        def hook(_m, _a, out, stack=stack):
            captured[stack.layers] = (out[0] if isinstance(out, tuple) else out).detach()
        handles.append(hf_model.get_submodule(stack.layers)[-1].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = hf_model(input_ids=ids, decoder_input_ids=ids[:, :5])
    finally:
        for handle in handles:
            handle.remove()
    return captured[spec.encoder.layers], captured[spec.decoder.layers], out


@pytest.mark.parametrize("seq2seq", SEQ2SEQ_ARCHITECTURES)
def test_encoder_decoder_rows_name_both_stacks_and_decode_exactly(seq2seq):
    hf_model = build_seq2seq_model(seq2seq)
    spec = adapter.encoder_decoder_spec(hf_model.config.model_type)
    adapter.validate_encoder_decoder(spec, hf_model, seq2seq)
    assert spec.decoder.cross_attn and not spec.encoder.cross_attn
    ids = torch.tensor([[5, 9, 13, 2, 7, 11, 3, 4]])
    encoded, decoded, out = _last_block_outputs(hf_model, spec, ids)
    # the decoder's last block output, decoded by the row, is the model's logits (T5: final norm and the
    # d_model ** -0.5 rescale of tied embeddings; BART: post-norm blocks, final_logits_bias)
    with torch.no_grad():
        logits = parts.decode_decoder(spec, hf_model, decoded)
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=1e-5)
    assert (logits - hf_model.get_submodule(spec.unembed)(decoded)).abs().max() > 1e-3  # the extra steps matter
    # and the encoder's last block output (after its final norm, if any) is what the decoder attends to
    with torch.no_grad():
        final = hf_model.get_submodule(spec.encoder.final_norm)(encoded) if spec.encoder.final_norm else encoded
    torch.testing.assert_close(final, out.encoder_last_hidden_state, rtol=0, atol=1e-6)
    # and decoder-only analyses refuse the model type by name
    with pytest.raises(UnsupportedArchitecture, match=rf"'{seq2seq}' is an encoder-decoder model"):
        adapter.spec_for_model_type(seq2seq)


def test_encoder_decoder_row_with_missing_modules_names_them():
    hf_model = build_seq2seq_model("bart")
    spec = adapter.encoder_decoder_spec("bart")
    broken = dataclasses.replace(spec, decoder=dataclasses.replace(spec.decoder, cross_attn="cross_attn"),
                                 logit_bias="no_bias")
    with pytest.raises(UnsupportedArchitecture, match=r"decoder\.cross_attn \(model\.decoder\.layers\.0\.cross_attn\)"
                                                      r".*logit_bias \(no_bias\).*adapter\.py"):
        adapter.validate_encoder_decoder(broken, hf_model, "bart")
    with pytest.raises(UnsupportedArchitecture, match=r"'pegasus' has no encoder-decoder row.*adapter\.py"):
        adapter.encoder_decoder_spec("pegasus")
