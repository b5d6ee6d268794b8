"""Logit lens invariants on tiny random models of every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import lenses, prompts, tracing
from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.lenses import kl_divergence

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_last_layer_equals_model_logits(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.residual_stream(model, ids)
    assert trace.resid.shape == (model.info.n_layers + 1, len(ids), model.info.d_model)
    lens_logits = model.decode(trace.resid[-1])
    torch.testing.assert_close(lens_logits, trace.logits, rtol=0, atol=1e-5)
    # and the trace's logits are the model's plain forward logits
    torch.testing.assert_close(trace.logits, tracing.forward_logits(model, ids), rtol=0, atol=1e-5)


def test_lens_result_agrees_with_model_distribution(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    result = workbench.logit_lens(str(tiny_dir), LogitLensRequest(PROMPT, target=" Mary", top_k=5))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    probs = torch.softmax(tracing.forward_logits(model, ids).double(), -1)
    top = probs.topk(5, dim=-1)
    np.testing.assert_array_equal(result.top_ids[-1], top.indices.numpy())
    np.testing.assert_allclose(result.top_probs[-1], top.values.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.kl_to_final[-1], 0.0, atol=1e-9)
    assert (result.kl_to_final[:-1] >= 0).all()
    mary = prompts.single_token_id(model, " Mary")
    expected_rank = int((probs[-1] > probs[-1, mary]).sum()) + 1
    assert result.target_rank[-1] == expected_rank
    assert result.target_prob[-1] == pytest.approx(float(probs[-1, mary]), abs=1e-7)
    assert result.layer_labels.tolist() == ["embed"] + [str(i) for i in range(model.info.n_layers)]
    assert (np.diff(result.top_probs, axis=-1) <= 0).all()  # top-k sorted


def test_in_trace_lens_equals_decoding_the_recorded_residual_stream(workbench, tiny_dir):
    """The lens decoded inside the trace (in slot chunks, whatever their size) gives the statistics of
    decoding the recorded residual stream afterwards; chunking changes nothing."""
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    target = prompts.single_token_id(model, " Mary")
    logprobs = torch.log_softmax(model.decode(tracing.residual_stream(model, ids).resid).double(), -1)
    reference_kl = kl_divergence(logprobs[-1], logprobs)
    one_chunk = logit_lens.lens_statistics(model, ids, 4, target, budget_bytes=1 << 40)
    n_slots = model.info.n_layers + 1
    for budget in (1, 2 * len(ids) * model.info.vocab_size * 4 * 5, 1 << 40):  # 1, 2 and all slots per chunk
        lens = logit_lens.lens_statistics(model, ids, 4, target, budget_bytes=budget)
        assert lens.top_ids.shape == (n_slots, len(ids), 4) and lens.target_rank.shape == (n_slots,)
        torch.testing.assert_close(lens.top_logprobs.double(), logprobs.topk(4, -1).values, rtol=0, atol=1e-5)
        torch.testing.assert_close(lens.kl_to_final.double(), reference_kl, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lens.target_logprob.double(), logprobs[:, -1, target], rtol=0, atol=1e-5)
        assert torch.equal(lens.kl_to_final[-1], torch.zeros(len(ids)))  # KL(final || final) exactly 0
        assert torch.equal(lens.top_ids, one_chunk.top_ids) and torch.equal(lens.target_rank, one_chunk.target_rank)
    assert lenses.lens_chunk_slots(len(ids), model.info.vocab_size, 1) == 1


def test_kl_divergence_matches_definition():
    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64), -1)
    q = torch.log_softmax(torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64), -1)
    expected = sum(p.exp()[0, i] * (p[0, i] - q[0, i]) for i in range(3))
    assert float(kl_divergence(p, q)[0]) == pytest.approx(float(expected), abs=1e-12)
    assert float(kl_divergence(p, p)[0]) == 0.0


def test_gemma_softcap_is_applied(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["gemma3_text"]))
    assert model.hf_model.config.final_logit_softcapping == 30.0
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.residual_stream(model, ids)
    assert trace.logits.abs().max() < 30.0
    torch.testing.assert_close(model.decode(trace.resid[-1]), trace.logits, rtol=0, atol=1e-5)


def test_result_checks_shapes():
    with pytest.raises(ValueError, match="kl_to_final"):
        logit_lens.LogitLensResult(
            model_name="m", layer_labels=np.array(["embed", "0"]), tokens=np.array(["a"]),
            top_ids=np.zeros((2, 1, 3), np.int64), top_tokens=np.zeros((2, 1, 3), str),
            top_probs=np.zeros((2, 1, 3), np.float32), kl_to_final=np.zeros((2, 2), np.float32),
            target_token="", target_id=-1, target_rank=np.zeros(0, np.int64),
            target_prob=np.zeros(0, np.float32),
        )
