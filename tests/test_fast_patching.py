"""Fast activation patching (``workbench.patching_runs``) equals the plain implementation.

The plain path (``compute_activation(..., fast=False)``: one full batched forward per site and
block) is the reference. Tiny random models give logit-difference gaps of 4e-4 to 3e-2 on the
IOI pair, so float32 rounding alone (~1e-7 in a logit) moves ``m`` by up to ~1e-4 in EITHER
implementation; the 1e-5 comparison in ``m`` therefore runs in float64, where rounding is
negligible and only a difference in method would show. In float32 the two agree in logit-
difference units to float32 noise.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.tiny_models import build_tokenizer
from workbench import patching_runs, prompt_pairs
from workbench.analyses import activation_patching, request_digest
from workbench.analyses.activation_patching import COMPONENTS, ActivationPatchingRequest
from workbench.interventions import HEADS, SITES
from workbench.store import ResultKey

PAIR = prompt_pairs.ioi_pair("When {io} and {s} went to the store, {s} gave a drink to", "Mary", "John")
REQUEST = ActivationPatchingRequest(PAIR.clean, PAIR.corrupted, PAIR.answer, PAIR.wrong)


def _compute(workbench, model, fast: bool, request=REQUEST, progress=lambda f, m: None):
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    return activation_patching.compute_activation(
        model, pair.clean_ids, pair.corrupted_ids, pair.answer_id, pair.wrong_id, request, progress, fast=fast
    )


def _no_plain(*args, **kwargs):
    raise AssertionError("the fast path fell back to the plain one")


@pytest.fixture
def fast_only(monkeypatch):
    """The fast path must not fall back to the plain one (no warning, no plain call)."""
    monkeypatch.setattr(activation_patching, "_activation_patching", _no_plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _assert_same(fast, plain, atol=1e-5):
    for component in COMPONENTS:
        assert fast.scores(component).shape == plain.scores(component).shape, component
        np.testing.assert_allclose(fast.scores(component), plain.scores(component), rtol=0, atol=atol,
                                   err_msg=component)
    assert fast.ld_clean == plain.ld_clean and fast.ld_corrupted == plain.ld_corrupted


def _fast(workbench, model, monkeypatch):
    """The fast path's result; fails if it fell back to the plain path (a warning or a plain call)."""
    with monkeypatch.context() as patch:
        patch.setattr(activation_patching, "_activation_patching", _no_plain)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return _compute(workbench, model, fast=True)


def _equal_in_float64(workbench, name, monkeypatch):
    model = workbench.model(name)
    model.hf_model.double()
    try:
        plain = _compute(workbench, model, fast=False)
        fast = _fast(workbench, model, monkeypatch)
    finally:
        model.hf_model.float()
    _assert_same(fast, plain, atol=1e-5)
    assert np.abs(plain.act_resid).max() > 0.5 and np.abs(plain.act_heads).max() > 1e-3  # patches did something
    assert plain.act_heads.shape == (model.info.n_layers, model.info.n_heads)
    return model


def test_fast_equals_plain_on_every_architecture(workbench, tiny_dir, monkeypatch):
    """Every site, heads included, on GPT-2 / Llama / Qwen2 / Gemma 3 (sliding window 8 < 14 tokens)."""
    model = _equal_in_float64(workbench, str(tiny_dir), monkeypatch)
    assert patching_runs.supports(model)


def test_fast_equals_plain_in_float32(workbench, tiny_dir, monkeypatch):
    """The production dtype: equal up to float32 noise, compared in logit-difference units."""
    model = workbench.model(str(tiny_dir))
    plain = _compute(workbench, model, fast=False)
    fast = _fast(workbench, model, monkeypatch)
    gap = abs(plain.ld_clean - plain.ld_corrupted)
    for component in COMPONENTS:
        np.testing.assert_allclose(fast.scores(component) * gap, plain.scores(component) * gap, rtol=0, atol=1e-6,
                                   err_msg=component)


# Variants beyond tests/tiny_models.py: mixed sliding / full layers, sliding windows shorter than
# the cached prefix, Qwen3's q/k norms. name -> (config class, its arguments)
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)
EXTRA_CONFIGS = {
    "gemma3_mixed": ("Gemma3TextConfig", dict(
        SMALL, num_hidden_layers=4, head_dim=16, final_logit_softcapping=30.0, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )),
    "mistral_sliding": ("MistralConfig", dict(SMALL, num_hidden_layers=3, sliding_window=4)),
    "qwen2_sliding": ("Qwen2Config", dict(
        SMALL, num_hidden_layers=3, use_sliding_window=True, sliding_window=4, max_window_layers=1,
    )),
    "qwen3": ("Qwen3Config", dict(SMALL, num_hidden_layers=3, head_dim=16)),
}


@pytest.fixture(scope="module")
def extra_dirs(tmp_path_factory):
    import transformers
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("fast_patching_models")
    tokenizer = build_tokenizer()
    common = dict(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2)
    dirs = {}
    for index, (name, (config_class, arguments)) in enumerate(EXTRA_CONFIGS.items()):
        torch.manual_seed(index)
        config = getattr(transformers, config_class)(**arguments, **common)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith("bias"):
                    param.normal_(0.0, 0.1)
                elif "norm" in param_name:
                    param.add_(torch.randn_like(param) * 0.1)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("variant", list(EXTRA_CONFIGS))
def test_fast_equals_plain_on_sliding_and_mixed_layers(workbench, extra_dirs, variant, monkeypatch):
    model = _equal_in_float64(workbench, str(extra_dirs[variant]), monkeypatch)
    assert patching_runs.supports(model)


def test_clean_into_clean_is_zero_through_the_cache_path(workbench, tiny_dir):
    """Every (site, position) and head of every block written with its own value, from a cached
    prefix of 0 and of 5 positions: m = 0 up to rounding (in logit-difference units)."""
    model = workbench.model(str(tiny_dir))
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    sites = (*SITES, HEADS)
    run = patching_runs.record_corrupted(model, pair.clean_ids, sites)
    ld = activation_patching.logit_diff(run.logits, pair.answer_id, pair.wrong_id)
    target = patching_runs.Target(pair.answer_id, pair.wrong_id, ld_clean=ld + 1.0, ld_corrupted=ld)  # m = LD - ld
    seq, n_heads = len(pair.clean_ids), model.info.n_heads
    for start in (0, 5):
        calls = patching_runs._capture_calls(model, pair.clean_ids, run, target, start)
        for layer in range(model.info.n_layers):
            rows = [(site, p) for site in SITES for p in range(start, seq)] + [(HEADS, h) for h in range(n_heads)]
            plan = patching_runs._BlockPlan(layer, rows, start)
            m = patching_runs._run_pass(model, run.acts, run, target, plan, rows, calls)
            assert m.shape == (len(rows) + 1,)
            np.testing.assert_allclose(m, 0.0, atol=1e-5)
    # and the public entry point scores nothing where clean and corrupted are equal: exactly 0
    scores = patching_runs.patch_all(model, pair.clean_ids, run.acts, run, target, sites, lambda f, m: None)
    for site in sites:
        assert not scores[site].any()


@pytest.mark.parametrize("broken", ["probe", "pass"])
def test_fast_path_falls_back_when_a_control_row_disagrees(workbench, tiny_dirs, monkeypatch, broken):
    """A broken prefix (keys shifted by one position) is caught by the control row of the probe or
    of a pass: the result is the plain one, with a warning, never a different number."""
    model = workbench.model(str(tiny_dirs["llama"]))
    plain = _compute(workbench, model, fast=False)
    original = patching_runs._fill

    def shifted(cache, run, index, start, rows):
        if broken == "probe" or rows > 1:  # the probe runs one row, every pass at least two
            run = patching_runs.CorruptedRun(run.acts, [k.roll(1, dims=2) for k in run.keys], run.values, run.logits)
        original(cache, run, index, start, rows)

    monkeypatch.setattr(patching_runs, "_fill", shifted)
    with pytest.warns(UserWarning, match="fell back to the plain path"):
        fallback = _compute(workbench, model, fast=True)
    _assert_same(fallback, plain, atol=0)


def test_unsupported_model_types_use_the_plain_path(workbench, tiny_dirs, monkeypatch):
    model = workbench.model(str(tiny_dirs["gpt2"]))
    monkeypatch.setattr(patching_runs, "FAST_MODEL_TYPES", frozenset())
    assert not patching_runs.supports(model)
    called = []
    plain = activation_patching._activation_patching
    monkeypatch.setattr(activation_patching, "_activation_patching", lambda *a: called.append(1) or plain(*a))
    _compute(workbench, model, fast=True)
    assert called


def test_progress_reports_each_block_and_cancelling_stores_nothing(workbench, tiny_dirs, fast_only):
    name = str(tiny_dirs["qwen2"])
    model = workbench.model(name)
    seen = []
    result = _compute(workbench, model, fast=True, progress=lambda f, m: seen.append((f, m)))
    assert len(seen) == model.info.n_layers
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and fractions[0] > 0
    assert all("block" in message for _, message in seen)

    def cancel(fraction, message):
        if fraction is not None and fraction > 0.3:
            raise KeyboardInterrupt("cancelled")

    analysis = activation_patching.ANALYSIS
    with pytest.raises(KeyboardInterrupt):
        workbench.run(analysis, name, REQUEST, cancel)
    key = ResultKey(analysis.name, analysis.version, workbench.local_model(name).digest, request_digest(REQUEST))
    assert workbench.store.get_result(key, analysis.Result) is None
    stored = workbench.run(analysis, name, REQUEST)
    _assert_same(stored, result, atol=0)
    assert workbench.store.get_result(key, analysis.Result) is not None


@pytest.mark.slow
def test_fast_equals_plain_on_the_default_model(workbench, monkeypatch):
    """SmolLM2-135M, the IOI pair of bench/bench_patching.py, float32 as the app runs it."""
    model = workbench.model("smollm2-135m")
    plain = _compute(workbench, model, fast=False)
    fast = _fast(workbench, model, monkeypatch)
    assert abs(plain.ld_clean - plain.ld_corrupted) > 1.0  # a real gap: 1e-5 in m is far above rounding
    for component in ("resid", "heads", "attn", "mlp"):
        np.testing.assert_allclose(fast.scores(component), plain.scores(component), rtol=0, atol=1e-5,
                                   err_msg=component)
