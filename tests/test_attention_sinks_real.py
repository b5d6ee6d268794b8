"""Attention sinks on the real bundled models (slow): numbers measured for the closing note."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import logits_with_attention
from workbench import prompts, tracing
from workbench.analyses.attention_sinks import SinkProbeRequest

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is Paris, and the capital of Italy is Rome."


@pytest.mark.parametrize(
    ("name", "bos", "jump", "drop"),
    [("smollm2-135m", False, 11, 28), ("gemma3-270m", True, 5, 16)],
)
def test_first_position_is_the_primary_sink(workbench, name, bos, jump, drop):
    result = workbench.attention_sinks(name, SinkProbeRequest(prompt=PROMPT))
    assert result.first_is_bos is bos  # Gemma prepends <bos>; SmolLM2's first real token plays that role
    assert (result.tokens[0] == "<bos>") is bos
    assert result.first_head_fraction > 0.8  # most (layer, head) sink on position 0 (0.87 / 0.89 measured)
    assert result.head_sink_fraction[1:-1].max() < 0.1  # and almost none on any other token
    assert (result.jump_block, result.drop_block) == (jump, drop)
    assert result.resid_norms[jump + 1, 0] > 1.3 * result.resid_norms[jump, 0]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_eager_matches_sdpa_on_real_model(workbench, name):
    model = workbench.model(name)
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    eager = tracing.forward_logits(model, ids)
    torch.testing.assert_close(logits_with_attention(model, ids, "sdpa"), eager, rtol=0, atol=1e-3)
    trace = tracing.attention_and_states(model, ids)
    assert trace.attn.shape == (model.info.n_layers, model.info.n_heads, len(ids), len(ids))
    torch.testing.assert_close(trace.attn.sum(-1), torch.ones(trace.attn.shape[:-1]), rtol=0, atol=1e-5)
