"""Attention-sink probes: exact answers on hand-set tensors, and invariants on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import logits_with_attention
from workbench import prompts, tracing
from workbench.analyses import attention_sinks as sinks
from workbench.analyses import sink_levels
from workbench.analyses.attention_sinks import SinkProbeRequest, SinkThresholds
from workbench.analyses.sink_levels import SinkLevelsRequest
from workbench.errors import BadPrompt, BadRequest
from workbench.store.codec import same_result

PROMPT = "The capital of France is Paris. The capital of Italy is Rome."


# ---------------------------------------------------------------------- hand-set attention


def causal_uniform(seq: int) -> torch.Tensor:
    """A[i, k] = 1 / (i + 1) for k <= i."""
    rows = torch.arange(1, seq + 1, dtype=torch.float64)[:, None]
    return torch.tril(torch.ones(seq, seq, dtype=torch.float64)) / rows


def all_on_first(seq: int) -> torch.Tensor:
    attn = torch.zeros(seq, seq, dtype=torch.float64)
    attn[:, 0] = 1.0
    return attn


def test_sink_score_of_a_pure_sink_head():
    scores = sinks.sink_scores(all_on_first(5))
    assert scores[0] == 1.0
    assert torch.equal(scores[1:4], torch.zeros(3, dtype=torch.float64))
    assert torch.isnan(scores[4])  # the last key has no later query


def test_sink_score_of_uniform_causal_attention():
    seq = 4
    scores = sinks.sink_scores(causal_uniform(seq))
    # key k receives 1/(i+1) from each later query i, averaged over the T-1-k of them
    expected = [(1 / 2 + 1 / 3 + 1 / 4) / 3, (1 / 3 + 1 / 4) / 2, 1 / 4]
    torch.testing.assert_close(scores[:3], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


def test_sink_score_ignores_the_diagonal_and_earlier_queries():
    attn = torch.eye(3, dtype=torch.float64)  # every query attends only to itself
    scores = sinks.sink_scores(attn)
    assert scores[0] == 0.0 and scores[1] == 0.0


def test_sink_fraction_over_heads_and_layers():
    # 2 layers x 2 heads: three heads sink fully on the first token, one attends to itself only
    identity = torch.eye(4, dtype=torch.float64)
    attn = torch.stack([all_on_first(4), all_on_first(4), all_on_first(4), identity]).reshape(2, 2, 4, 4)
    scores = sinks.sink_scores(attn)
    first = sinks.sink_fraction(scores, 0.3, (0, 1))
    assert first[0] == 0.75
    per_layer = sinks.sink_fraction(scores, 0.3, (1,))
    assert per_layer[0, 0] == 1.0 and per_layer[1, 0] == 0.5
    assert torch.equal(first[1:], torch.zeros(3, dtype=torch.float64))  # NaN at the last key counts as no sink


def test_uniform_head_crosses_eps_exactly_where_expected():
    scores = sinks.sink_scores(causal_uniform(4))
    assert scores[0] == pytest.approx(13 / 36)  # 0.361: a sink at eps 0.3, not at eps 0.4
    assert sinks.sink_fraction(scores[None], 0.3, (0,))[0] == 1.0
    assert sinks.sink_fraction(scores[None], 0.4, (0,))[0] == 0.0


# ---------------------------------------------------------------------- hand-set hidden states


def test_sink_window_from_norms():
    # slots: embed, then blocks 0..5; block 1 jumps (+90), block 4 drops most (-70), block 2 dips a little
    norms = np.array([10.0, 12.0, 102.0, 100.0, 101.0, 31.0, 30.0])
    assert sinks.sink_window(norms) == (1, 4, 2, 4)


def test_sink_window_without_a_drop_runs_to_the_last_slot():
    norms = np.array([1.0, 2.0, 50.0, 60.0, 70.0])
    assert sinks.sink_window(norms) == (1, -1, 2, 4)


def test_drop_before_the_jump_is_ignored():
    norms = np.array([40.0, 5.0, 100.0, 90.0])  # block 0 drops, block 1 jumps, block 2 drops by 10
    assert sinks.sink_window(norms) == (1, 2, 2, 2)


def test_mask_lifetimes_and_kinds():
    slots, seq = 31, 4  # a 30-block model: primary-like needs lifetime >= 15, secondary 5..14
    cos = np.zeros((slots, seq))
    cos[:, 0] = 1.0
    cos[2:30, 1] = 0.95  # 28 slots inside the window 2..29 -> primary-like
    cos[10:17, 2] = -0.95  # 7 slots, negative cosine counts too -> secondary
    cos[5:8, 3] = 0.99  # 3 slots -> noise
    mask = sinks.sink_mask(cos, 2, 29, 0.9)
    assert not mask[:, 0].any()
    lifetimes = mask.sum(0)
    assert lifetimes.tolist() == [0, 28, 7, 3]
    kinds = sinks.classify(lifetimes, 30, SinkThresholds())
    assert kinds.tolist() == [sinks.KIND_FIRST, sinks.KIND_PRIMARY, sinks.KIND_SECONDARY, sinks.KIND_NOISE]
    assert sinks.onset_slots(mask).tolist() == [-1, 2, 10, 5]


def test_window_bounds_the_mask():
    cos = np.full((6, 2), 0.99)
    mask = sinks.sink_mask(cos, 2, 3, 0.9)
    assert mask[:, 1].tolist() == [False, False, True, True, False, False]


def test_secondary_bounds_are_strict():
    kinds = sinks.classify(np.array([0, 4, 5, 14, 15]), 30, SinkThresholds())
    assert kinds.tolist() == [sinks.KIND_FIRST, sinks.KIND_NOISE, sinks.KIND_SECONDARY, sinks.KIND_SECONDARY,
                              sinks.KIND_PRIMARY]


def test_mlp_alignment_against_the_sink_direction():
    resid = torch.zeros(3, 2, 2, dtype=torch.float64)  # 2 blocks, 2 positions, d = 2
    resid[:, 0] = torch.tensor([1.0, 0.0])  # the first token points along x at every slot
    mlp = torch.tensor([[[0.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, -2.0]]], dtype=torch.float64)
    align = sinks.mlp_alignment(mlp, resid)
    assert align[0, 1] == pytest.approx(1.0) and align[1, 1] == pytest.approx(0.0)


def test_compute_on_a_hand_built_secondary_sink():
    """Five blocks; position 2 is pushed onto the first token's direction by block 1's MLP."""
    n_layers, seq, d = 5, 4, 3
    attn = all_on_first(seq).expand(n_layers, 2, seq, seq).clone()
    resid = torch.zeros(n_layers + 1, seq, d, dtype=torch.float64)
    resid[:, 0] = torch.tensor([1.0, 0.0, 0.0]) * torch.tensor([1.0, 1.0, 50.0, 50.0, 50.0, 2.0])[:, None]
    resid[:, 1] = torch.tensor([0.0, 1.0, 0.0])
    resid[:, 3] = torch.tensor([0.0, 0.0, 1.0])
    resid[:, 2] = torch.tensor([0.0, 1.0, 0.0])
    resid[2:, 2] = torch.tensor([5.0, 0.1, 0.0])  # becomes a sink at slot 2 (after block 1)
    mlp_write = torch.zeros(n_layers, seq, d, dtype=torch.float64)
    mlp_write[1, 2] = torch.tensor([5.0, -0.9, 0.0])
    thresholds = SinkThresholds(primary_margin=3, min_secondary_lifetime=1)  # primary-like from lifetime 2
    result = sinks.compute("hand", ("a", "b", "c", "d"), False, attn, resid, mlp_write, thresholds)
    assert (result.jump_block, result.drop_block, result.window_start, result.window_end) == (1, 4, 2, 4)
    assert result.first_head_fraction == 1.0 and result.head_sink_fraction[1] == 0.0
    assert result.lifetimes.tolist() == [0, 0, 3, 0]
    assert result.kinds.tolist() == ["first", "none", "primary-like", "none"]
    assert result.onset_slot[2] == 2 and result.creator_block[2] == 1
    assert result.mlp_norm[1, 2] == pytest.approx(float(np.hypot(5.0, 0.9)), rel=1e-6)
    assert result.mlp_alignment[1, 2] == pytest.approx(5.0 / float(np.hypot(5.0, 0.9)), rel=1e-6)
    secondary = sinks.classify(result.lifetimes, n_layers, SinkThresholds(primary_margin=1, min_secondary_lifetime=2))
    assert secondary[2] == sinks.KIND_SECONDARY


def test_requests_validate():
    with pytest.raises(BadRequest, match="eps"):
        SinkProbeRequest(prompt="x", eps=1.5)
    with pytest.raises(BadRequest, match="cosine"):
        SinkProbeRequest(prompt="x", cos_threshold=0.0)
    with pytest.raises(BadRequest, match="empty"):
        SinkLevelsRequest(prompts=())


def test_bundled_prompt_set():
    texts = sink_levels.default_prompts()
    assert 24 <= len(texts) <= sink_levels.MAX_PROMPTS
    assert len(set(texts)) == len(texts) and all(t.strip() for t in texts)


# ---------------------------------------------------------------------- tiny models


def test_attention_rows_sum_to_one_and_are_causal(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.attention_and_states(model, ids)
    seq = len(ids)
    assert trace.attn.shape == (model.info.n_layers, model.info.n_heads, seq, seq)
    torch.testing.assert_close(trace.attn.sum(-1), torch.ones(trace.attn.shape[:-1]), rtol=0, atol=1e-5)
    assert (trace.attn >= 0).all()
    assert trace.attn.triu(diagonal=1).abs().max() == 0.0  # no query attends to a later key
    # the residual stream is the one the logit lens sees, and the logits the model's own
    torch.testing.assert_close(trace.resid, tracing.residual_stream(model, ids).resid, rtol=0, atol=0)
    torch.testing.assert_close(trace.logits, tracing.forward_logits(model, ids), rtol=0, atol=1e-5)


def test_eager_attention_equals_sdpa(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    eager = tracing.forward_logits(model, ids)
    sdpa = logits_with_attention(model, ids, "sdpa")
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)
    assert model.hf_model.config._attn_implementation == "eager"  # restored for later traces
    assert tracing.attention_and_states(model, ids).attn.shape[0] == model.info.n_layers


def test_mlp_write_is_the_mlp_output_where_no_post_norm(workbench, tiny_dirs):
    """Llama adds the MLP output to the residual as is: the recorded write must equal it."""
    model = workbench.model(str(tiny_dirs["llama"]))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.attention_and_states(model, ids)
    block = model.module(model.spec.layers)[1]
    mid = (trace.resid[2] - trace.mlp_write[1]).unsqueeze(0)
    with torch.no_grad():
        direct = block.mlp(block.post_attention_layernorm(mid))[0]
    torch.testing.assert_close(trace.mlp_write[1], direct, rtol=0, atol=1e-5)


def test_probe_on_tiny_model_matches_definitions(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    request = SinkProbeRequest(prompt=PROMPT)
    result = workbench.attention_sinks(str(tiny_dir), request)
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.attention_and_states(model, ids)
    seq = len(ids)
    # sink score by the definition, written out with loops for one head
    layer, h, k = model.info.n_layers - 1, 1, 2
    manual = sum(float(trace.attn[layer, h, i, k]) for i in range(k + 1, seq)) / (seq - 1 - k)
    assert result.sink_scores[layer, h, k] == pytest.approx(manual, abs=1e-6)
    assert np.isnan(result.sink_scores[:, :, -1]).all()
    scores = result.sink_scores[:, :, :-1]
    assert result.head_sink_fraction[0] == pytest.approx(float((scores[:, :, 0] > 0.3).mean()))
    np.testing.assert_allclose(result.resid_norms, trace.resid.norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.cos_to_first[:, 0], 1.0, atol=1e-6)
    assert result.first_is_bos is False  # the tiny tokenizer adds no BOS
    assert result.kinds[0] == "first"
    assert result.window_start == result.jump_block + 1
    assert result.lifetimes.tolist() == result.is_sink.sum(0).tolist()
    again = workbench.attention_sinks(str(tiny_dir), request)  # from the store, bit for bit
    assert same_result(result, again)


def test_batch_mode_collects_the_probes(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    texts = ("The capital of France is Paris.", "One two three four five six seven eight nine ten.")
    request = SinkLevelsRequest(prompts=texts, primary_margin=0, min_secondary_lifetime=0)  # loose on 3 blocks
    result = workbench.sink_levels(name, request)
    probes = [workbench.attention_sinks(name, request.probe_request(t)) for t in texts]
    assert result.prompt_secondary_count.tolist() == [len(p.secondary_positions()) for p in probes]
    assert result.onset_counts.sum() == result.count("secondary") == result.prompt_secondary_count.sum()
    assert len(result.sink_kind) == sum(int(((p.kinds != "none") & (p.kinds != "first")).sum()) for p in probes)
    assert result.prompt_first_fraction.tolist() == pytest.approx([p.first_head_fraction for p in probes])
    for row in range(len(result.sink_prompt)):
        probe = probes[result.sink_prompt[row]]
        pos = result.sink_position[row]
        assert probe.kinds[pos] == result.sink_kind[row] and result.sink_creator[row] == result.sink_onset[row] - 1
        assert result.sink_lifetime[row] == probe.lifetimes[pos]
    assert same_result(result, workbench.sink_levels(name, request))


def test_batch_mode_reports_the_prompts_probed_so_far(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    texts = tuple(f"Prompt number {i} is here." for i in range(17))  # every 2 prompts (17 // 8), last one not
    request = SinkLevelsRequest(prompts=texts, primary_margin=0, min_secondary_lifetime=0)
    partials = []
    result = workbench.run(sink_levels.ANALYSIS, name, request, on_partial=partials.append)
    assert [len(p.prompt_secondary_count) for p in partials] == list(range(2, 17, 2))
    for partial in partials:  # each is exactly the aggregate of its first prompts
        n = len(partial.prompt_secondary_count)
        assert partial.prompt_secondary_count.tolist() == result.prompt_secondary_count[:n].tolist()
        assert partial.onset_counts.sum() == result.prompt_secondary_count[:n].sum()


def test_bad_prompt_in_batch_is_rejected(workbench, tiny_dirs):
    with pytest.raises(BadPrompt):
        workbench.sink_levels(str(tiny_dirs["llama"]), SinkLevelsRequest(prompts=("fine", "  ")))


def test_aggregate_by_hand():
    """Two hand-set probes through ``aggregate``: the secondary sink rows are exactly known."""
    n_layers, seq = 5, 4
    attn = all_on_first(seq).expand(n_layers, 1, seq, seq).clone()
    resid = torch.zeros(n_layers + 1, seq, 2, dtype=torch.float64)
    resid[:, :, 1] = 1.0
    resid[:, 0] = torch.tensor([1.0, 0.0]) * torch.tensor([1.0, 30.0, 30.0, 30.0, 30.0, 30.0])[:, None]
    resid[2:, 3] = torch.tensor([4.0, 0.0])  # position 3: a sink from slot 2 to 5 (lifetime 4)
    mlp = torch.zeros(n_layers, seq, 2, dtype=torch.float64)
    mlp[1, 3] = torch.tensor([3.0, 4.0])
    thresholds = SinkThresholds(primary_margin=0, min_secondary_lifetime=2)
    with_sink = sinks.compute("m", ("a", "b", "c", "d"), True, attn, resid, mlp, thresholds)
    without = sinks.compute("m", ("a", "b", "c", "d"), True, attn, resid[:, [0, 1, 2, 1]], mlp, thresholds)
    levels = sink_levels.aggregate("m", [without, with_sink])
    assert levels.prompt_secondary_count.tolist() == [0, 1]
    assert levels.sink_prompt.tolist() == [1] and levels.sink_position.tolist() == [3]
    assert levels.sink_onset.tolist() == [2] and levels.sink_lifetime.tolist() == [4]
    assert levels.sink_creator.tolist() == [1] and levels.sink_kind.tolist() == ["secondary"]
    assert levels.sink_alignment[0] == pytest.approx(0.6) and levels.sink_mlp_norm[0] == pytest.approx(5.0)
    assert levels.onset_counts.tolist() == [0, 0, 1, 0, 0, 0]
    assert levels.share_with_secondary == 0.5 and levels.first_is_bos


def test_peer_cosine_baseline():
    resid = torch.zeros(2, 4, 2, dtype=torch.float64)
    resid[:, 0] = torch.tensor([1.0, 0.0])
    resid[0, 1:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -2.0]])  # pairs: 0, 0, 1 -> median 0
    resid[1, 1:] = torch.tensor([[1.0, 0.0], [-3.0, 0.0], [0.0, 1.0]])  # pairs: 1, 0, 0 -> median 0
    resid[1, 3] = torch.tensor([1.0, 1.0])  # pairs: 1, 1/sqrt2, 1/sqrt2 -> median 1/sqrt2
    peer = sinks.peer_cosine(resid)
    assert peer[0] == 0.0 and peer[1] == pytest.approx(2**-0.5)
    assert torch.isnan(sinks.peer_cosine(resid[:, :2])).all()


def test_one_token_prompt(workbench, tiny_dirs):
    result = workbench.attention_sinks(str(tiny_dirs["llama"]), SinkProbeRequest(prompt="The"))
    assert len(result.tokens) == 1 and result.kinds.tolist() == ["first"]
    assert np.isnan(result.sink_scores).all() and result.first_head_fraction == 0.0
    assert np.isnan(result.peer_cos).all()
