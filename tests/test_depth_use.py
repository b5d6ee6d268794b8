"""Depth use: contributions are the sublayer outputs, skipping nothing changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import prompts, tracing
from workbench.analyses import depth_use
from workbench.analyses.depth_use import DepthUseRequest

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _attention_outputs(model, ids) -> list[torch.Tensor]:
    """Plain HF forward hooks (no nnsight) on every attention module: its output[0]."""
    captured, handles = [], []
    for layer in range(model.info.n_layers):
        attn = model.module(f"{model.spec.layers}.{layer}.{model.spec.attn}")
        handles.append(attn.register_forward_hook(lambda m, a, out: captured.append(out[0][0].detach())))
    try:
        with torch.no_grad():
            model.hf_model(ids.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return captured


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_attention_contribution_is_the_attention_output(workbench, tiny_dirs, arch):
    model = workbench.model(str(tiny_dirs[arch]))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.sublayer_stream(model, ids)
    for layer, attn_out in enumerate(_attention_outputs(model, ids)):
        torch.testing.assert_close(trace.resid_mid[layer] - trace.resid_in[layer], attn_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(trace.resid_in[1:], trace.resid_out[:-1], rtol=0, atol=0)


def test_skipping_no_layer_changes_nothing(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    clean = tracing.residual_stream(model, ids)
    resid, logits = tracing.skip_layers(model, ids, [None])
    torch.testing.assert_close(resid[0], clean.resid, rtol=0, atol=1e-5)
    assert depth_use.kl_from_logits(clean.logits, logits[0]).max() < 1e-9


def test_skipping_a_block_copies_its_input(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    clean = tracing.residual_stream(model, ids)
    resid, logits = tracing.skip_layers(model, ids, [None, 1, 0])
    torch.testing.assert_close(resid[1, 2], resid[1, 1], rtol=0, atol=0)  # block 1 output := its input
    torch.testing.assert_close(resid[1, :2], clean.resid[:2], rtol=0, atol=1e-5)  # untouched before it
    assert (resid[1, 3] - clean.resid[3]).abs().max() > 1e-3  # later blocks see the change
    torch.testing.assert_close(resid[2, 1], resid[2, 0], rtol=0, atol=0)
    torch.testing.assert_close(logits[0], clean.logits, rtol=0, atol=1e-5)


def test_depth_use_result_numbers(workbench, tiny_dirs):
    name = str(tiny_dirs["gpt2"])
    result = workbench.depth_use(name, DepthUseRequest(PROMPT))
    model = workbench.model(name)
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.sublayer_stream(model, ids)
    attn = trace.resid_mid - trace.resid_in
    expected = (attn[:, 1:].norm(dim=-1) / trace.resid_in[:, 1:].norm(dim=-1)).mean(-1)
    np.testing.assert_allclose(result.attn_rel_norm, expected.numpy(), rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(trace.resid_out - trace.resid_mid, trace.resid_mid, dim=-1)
    np.testing.assert_allclose(result.mlp_cos, cos[:, 1:].mean(-1).numpy(), rtol=1e-5, atol=1e-6)
    assert (result.skip_kl_last > 0).all() and (result.skip_kl_mean > 0).all()
    assert np.allclose(np.tril(result.skip_resid_change), 0)  # only later layers are reported
    assert (np.triu(result.skip_resid_change, 1)[np.triu_indices(model.info.n_layers, 1)] > 0).all()
    # the last block's skip changes no later block but does change the output
    assert result.skip_resid_change[-1].sum() == 0 and result.skip_kl_last[-1] > 0


def test_first_token_option_changes_the_average(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    without = workbench.depth_use(name, DepthUseRequest(PROMPT))
    with_first = workbench.depth_use(name, DepthUseRequest(PROMPT, include_first_token=True))
    assert not np.allclose(without.attn_rel_norm, with_first.attn_rel_norm)
    np.testing.assert_array_equal(without.skip_kl_last, with_first.skip_kl_last)
