"""Patchscope (Ghandeharioun et al. 2024): request checks, the invariants on a tiny model of every
architecture, the batched grid against single cells, the key/value-cached continuation against
recomputation, ``next_token_logits``, the figures, and a slow qualitative check on SmolLM2."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.tiny_models import ARCHITECTURES, MATRIX_ARCHITECTURES
from workbench import export, prompts, tracing
from workbench.analyses import ANALYSES, patchscope, request_digest, request_json
from workbench.analyses.patchscope import ANALYSIS, IDENTITY_PROMPT, MAX_CELLS, PatchscopeRequest, next_token_logits
from workbench.errors import BadRequest

EVERY_ARCHITECTURE = ARCHITECTURES + MATRIX_ARCHITECTURES
PROMPT = "When Mary and John went to the store, John gave a drink to"
ABSOLUTE_POSITIONS = {"gpt2"}  # learned position embeddings are part of slot 0



@pytest.fixture(params=EVERY_ARCHITECTURE)
def arch(request):
    return request.param


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1)


def _greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    """The model's own greedy continuation, recomputed from scratch at every step (no cache)."""
    out = []
    for _ in range(n):
        nxt = int(tracing.forward_logits(model, torch.cat([ids, torch.tensor(out, dtype=ids.dtype)]))[-1].argmax())
        out.append(nxt)
    return out


# ------------------------------------------------------------------------------ request (no model)


def test_request_is_in_the_registry_and_survives_json():
    assert ANALYSIS in ANALYSES
    request = PatchscopeRequest("The capital of France is", source_position=-3, source_slots=(0, 2),
                                target_slots=(1, 3), placeholder=-1, n_tokens=3, top_k=4)
    rebuilt = ANALYSIS.request(json.loads(request_json(request)))
    assert rebuilt == request and request_digest(rebuilt) == request_digest(request)
    assert PatchscopeRequest("x").target_prompt == IDENTITY_PROMPT


@pytest.mark.parametrize("fields, message", [
    ({"prompt": ""}, "source prompt is empty"),
    ({"prompt": "  \n"}, "source prompt is empty"),
    ({"target_prompt": ""}, "target prompt is empty"),
    ({"source_slots": tuple(range(33)), "target_slots": tuple(range(32))}, "too many"),
    ({"source_slots": tuple(range(2)), "target_slots": ()}, None),  # 16 cells: fine
    ({"source_slots": (1, 1)}, "twice"),
    ({"target_slots": (-1,)}, "between 0"),
    ({"n_tokens": 0}, "n_tokens"),
    ({"n_tokens": 11}, "n_tokens"),
    ({"top_k": 0}, "top_k"),
    ({"source_position": True}, "whole number"),
])
def test_bad_requests_are_refused_before_any_model(fields, message):
    base = {"prompt": "The capital of France is"}
    if message is None:
        PatchscopeRequest(**{**base, **fields})
        return
    with pytest.raises(BadRequest, match=message):
        PatchscopeRequest(**{**base, **fields})


def test_cell_limit_is_exact():
    PatchscopeRequest("x", source_slots=tuple(range(32)), target_slots=tuple(range(32)))  # 1024 cells
    assert 32 * 32 == MAX_CELLS
    with pytest.raises(BadRequest, match="1,056 cells"):
        PatchscopeRequest("x", source_slots=tuple(range(33)), target_slots=tuple(range(32)))


def test_default_slots_are_evenly_spaced_and_include_both_ends():
    assert patchscope.default_slots(30) == (0, 4, 9, 13, 17, 21, 26, 30)
    assert patchscope.default_slots(3) == (0, 1, 2, 3)
    assert patchscope.default_slots(18) == (0, 3, 5, 8, 10, 13, 15, 18)


# ------------------------------------------------------------------------------ invariants, every architecture


def test_identity_invariants_on_every_architecture(workbench, arch_dirs, arch):
    """Target prompt = source prompt, placeholder = source position = the last token: the diagonal
    (l' = l) is the model's own next-token distribution and its own greedy continuation; the last
    target slot L reads h_l through the final norm and unembedding, i.e. it is the logit lens of h_l."""
    name = str(arch_dirs(arch))
    model = workbench.model(name)
    n_layers = model.info.n_layers
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    own = _probs(tracing.forward_logits(model, ids)[-1])
    result = workbench.patchscope(name, PatchscopeRequest(PROMPT, target_prompt=PROMPT, n_tokens=3))
    assert list(result.source_slots) == list(range(n_layers + 1)) == list(result.target_slots)
    own_top = own.topk(5)
    np.testing.assert_array_equal(result.own_top_ids, own_top.indices.numpy())
    np.testing.assert_allclose(result.own_top_probs, own_top.values.numpy(), rtol=0, atol=1e-6)
    continuation = _greedy(model, ids, 3)
    diagonal = result.diagonal()
    assert len(diagonal) == n_layers + 1
    for i, j in diagonal:
        np.testing.assert_array_equal(result.top_ids[i, j], own_top.indices.numpy())
        np.testing.assert_allclose(result.top_probs[i, j], own_top.values.numpy(), rtol=0, atol=1e-5)
        assert result.decoded_ids[i, j].tolist() == continuation, (arch, i)
        assert result.first_prob[i, j] == pytest.approx(float(own[continuation[0]]), abs=1e-5)
    # the off-diagonal cells did patch something: the embedding read at the last slot is another distribution
    assert not np.allclose(result.top_probs[0, -1], result.top_probs[-1, -1], rtol=0, atol=1e-6)
    # target slot L: the logit lens of each source state
    states = tracing.residual_stream(model, ids).resid[:, -1]
    lens = _probs(model.decode(states))
    for i in range(n_layers + 1):
        top = lens[i].topk(5)
        np.testing.assert_array_equal(result.top_ids[i, -1], top.indices.numpy())
        np.testing.assert_allclose(result.top_probs[i, -1], top.values.numpy(), rtol=0, atol=1e-5)


def test_last_slot_reads_the_source_output_in_any_target_prompt(workbench, arch_dirs, arch):
    """Patching h_L into slot L at the placeholder (the last target token) makes the next-token
    distribution there the source's own, whatever the target prompt says before it."""
    name = str(arch_dirs(arch))
    model = workbench.model(name)
    n_layers = model.info.n_layers
    source = prompts.encode(model, PROMPT, workbench.settings).ids
    target = prompts.encode(model, IDENTITY_PROMPT, workbench.settings).ids
    logits = next_token_logits(model, source, -1, target, -1, [n_layers, 0, 1])
    assert logits.shape == (3, model.info.vocab_size) and logits.dtype == torch.float32
    own = tracing.forward_logits(model, source)[-1]
    torch.testing.assert_close(logits[0], own, rtol=0, atol=1e-4)
    assert not torch.allclose(logits[1], own, atol=1e-3)  # a low slot is overwritten by the rest of the target
    # the same slot on both sides with target = source: the model's own logits at every slot
    same = next_token_logits(model, source, -1, source, -1, list(range(n_layers + 1)))
    torch.testing.assert_close(same, own.expand_as(same), rtol=0, atol=1e-4)


def test_slot_zero_is_the_token_swapped_in(workbench, arch_dirs, arch):
    """Without learned absolute positions, slot 0 is the token's embedding alone: patching the source
    token's slot-0 state into the placeholder equals running the target with that token in its place."""
    if arch in ABSOLUTE_POSITIONS:
        pytest.skip("GPT-2's slot 0 adds a learned position embedding: the patch carries the source position")
    name = str(arch_dirs(arch))
    model = workbench.model(name)
    source = prompts.encode(model, PROMPT, workbench.settings).ids
    target = prompts.encode(model, IDENTITY_PROMPT, workbench.settings).ids
    position = 3
    swapped = target.clone()
    swapped[-2] = source[position]
    logits = next_token_logits(model, source, position, target, -2, [0])
    expected = tracing.forward_logits(model, swapped)[-2]
    torch.testing.assert_close(logits[0], expected, rtol=0, atol=1e-4)


def test_batched_grid_equals_each_cell_alone_and_the_cache_equals_recomputation(workbench, arch_dirs, arch):
    name = str(arch_dirs(arch))
    model = workbench.model(name)
    request = PatchscopeRequest(PROMPT, source_position=-4, source_slots=(0, 1, 3), target_slots=(1, 2),
                                placeholder=-2, n_tokens=3, top_k=4)  # placeholder before the last token
    grid = workbench.patchscope(name, request)
    target = prompts.encode(model, IDENTITY_PROMPT, workbench.settings).ids
    states, _ = patchscope.source_states(model, prompts.encode(model, PROMPT, workbench.settings).ids,
                                         grid.source_position)
    for i, source_slot in enumerate(request.source_slots):
        for j, target_slot in enumerate(request.target_slots):
            alone = workbench.patchscope(name, dataclasses.replace(
                request, source_slots=(source_slot,), target_slots=(target_slot,)))
            np.testing.assert_array_equal(alone.decoded_ids[0, 0], grid.decoded_ids[i, j])
            np.testing.assert_array_equal(alone.top_ids[0, 0], grid.top_ids[i, j])
            np.testing.assert_allclose(alone.top_probs[0, 0], grid.top_probs[i, j], rtol=0, atol=1e-5)
            assert alone.decoded[0, 0] == grid.decoded[i, j]
            # recomputation: the whole sequence from scratch at every step, the patch re-applied each time
            decoded = grid.decoded_ids[i, j].tolist()
            for step in range(request.n_tokens):
                ids = torch.cat([target, torch.tensor(decoded[:step], dtype=target.dtype)])
                with model.lock, torch.no_grad(), patchscope._patched(model, len(target) - 2,
                                                                      states[[source_slot]], [target_slot]):
                    logits = model.hf_model(ids[None], use_cache=False).logits[0, -1]
                assert int(logits.argmax()) == decoded[step], (arch, source_slot, target_slot, step)
                if step == 0:
                    p = _probs(logits)
                    assert grid.first_prob[i, j] == pytest.approx(float(p[decoded[0]]), abs=1e-5)
    assert grid.diagonal() == [(1, 0)]  # source slot 1 = target slot 1


def test_bad_input_on_a_model_is_refused_and_nothing_is_stored(workbench, arch_dirs):
    name = str(arch_dirs("llama"))
    model = workbench.model(name)
    n_tokens = len(prompts.encode(model, PROMPT, workbench.settings).ids)
    cases = [
        (PatchscopeRequest(PROMPT, source_position=n_tokens), "source position"),
        (PatchscopeRequest(PROMPT, source_position=-n_tokens - 1), "outside the prompt"),
        (PatchscopeRequest(PROMPT, placeholder=200), "placeholder position 200 is outside"),
        (PatchscopeRequest(PROMPT, source_slots=(0, 4)), "Source slot 4 does not exist"),
        (PatchscopeRequest(PROMPT, target_slots=(9,)), "Target slot 9 does not exist"),
        # a target prompt that fits the model, but not with four decoded tokens after it
        (PatchscopeRequest(PROMPT, target_prompt="Q" * (model.info.max_positions - 2)), "exceed .* 128 positions"),
    ]
    for request, message in cases:
        with pytest.raises(BadRequest, match=message):
            workbench.patchscope(name, request)
    with pytest.raises(BadRequest, match="outside"):
        next_token_logits(model, torch.tensor([1, 2]), 2, torch.tensor([1, 2]), -1, [0])
    with pytest.raises(BadRequest, match="slots"):
        next_token_logits(model, torch.tensor([1, 2]), 0, torch.tensor([1, 2]), -1, [4])
    assert workbench.store.count_results() == 0
    # negative positions resolve from the end; the same request twice comes from the cache
    first = workbench.patchscope(name, PatchscopeRequest(PROMPT, source_position=-n_tokens, n_tokens=1))
    assert first.source_position == 0 and first.placeholder == len(first.target_tokens) - 1
    assert workbench.store.count_results(patchscope.NAME) == 1


def test_progress_reports_every_chunk_and_can_cancel(workbench, arch_dirs, monkeypatch):
    name = str(arch_dirs("qwen2"))
    monkeypatch.setattr(patchscope, "TOKEN_BUDGET", 40)  # a few cells per forward pass
    seen = []

    def report(fraction, message):
        seen.append((fraction, message))

    result = workbench.patchscope(name, PatchscopeRequest(PROMPT, n_tokens=2), report)
    chunks = [m for _, m in seen if m.startswith("Patchscope cells")]
    assert len(chunks) > 2 and result.first_prob.shape == (4, 4)
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    class Cancelled(Exception):
        pass

    def cancel(fraction, message):
        if message.startswith("Patchscope cells") and fraction > 0:
            raise Cancelled

    with pytest.raises(Cancelled):
        workbench.patchscope(name, PatchscopeRequest(PROMPT, n_tokens=3), cancel)
    assert workbench.store.count_results(patchscope.NAME) == 1  # only the finished run


# ------------------------------------------------------------------------------ figures and export


def test_figures_show_the_grid_and_the_diagonal(workbench, arch_dirs):
    name = str(arch_dirs("gpt2"))
    request = PatchscopeRequest("The capital of France is", source_slots=(0, 2, 3), target_slots=(2, 3), n_tokens=2)
    result = workbench.patchscope(name, request)
    grid = ANALYSIS.figure("grid", result)
    np.testing.assert_array_equal(np.asarray(grid.data[0].z), result.first_prob)
    assert list(grid.layout.yaxis.ticktext) == ["embed", "1", "2"] and list(grid.layout.xaxis.ticktext) == ["1", "2"]
    assert "top-5" in grid.data[0].customdata[0][0]
    strip = ANALYSIS.figure("diagonal", result)
    assert list(strip.layout.xaxis.ticktext) == ["1", "2"]  # slots 2 and 3 are on both axes
    np.testing.assert_array_equal(np.asarray(strip.data[0].z)[0], [result.first_prob[1, 0], result.first_prob[2, 1]])
    disjoint = workbench.patchscope(name, dataclasses.replace(request, source_slots=(0,), target_slots=(3,)))
    empty = ANALYSIS.figure("diagonal", disjoint)
    assert not empty.data and "No source slot" in empty.layout.annotations[0].text
    style = export.paper_style("single column")
    for figure in ANALYSIS.figures:
        spec = export.spec_of(patchscope.NAME, figure, name, request)
        bundle = export.make_bundle(workbench, spec, style, formats=())
        assert bundle.manifest["sources"][0]["analysis"] == patchscope.NAME
        assert len(export.figure_data(export.styled(ANALYSIS.figure(figure, result), style))) > 0
    summary = ANALYSIS.summary(result)[0]
    np.testing.assert_allclose(summary.depth, [2 / 3, 1.0])
    np.testing.assert_allclose(summary.values, [result.first_prob[1, 0], result.first_prob[2, 1]])


# ------------------------------------------------------------------------------ a real model


@pytest.mark.slow
def test_smollm2_identity_patchscope_repeats_the_subject_and_reads_the_answer(workbench):
    """SmolLM2-135M, "The capital of France is", the identity target prompt, target slot = source slot.
    At " France", the early and middle slots (up to 13 of 30) still hold the token: the model answers the
    identity pattern with " -> France". At " is", slot 26 (not the last) already holds the answer: it
    decodes " Paris", as the model's own output (slot 30, read at slot 30) does. Measured on the bundled
    Q4_1 weights: France at slots 0, 4, 9, 13 (not 17, 21); Paris at slots 26 and 30 (not 4 to 21)."""
    name = "smollm2-135m"
    model = workbench.model(name)
    prompt = "The capital of France is"
    encoded = prompts.encode(model, prompt, workbench.settings)
    france = encoded.tokens.index(" France")
    slots = (0, 4, 9, 13, 26, 30)
    subject = workbench.patchscope(name, PatchscopeRequest(prompt, source_position=france, source_slots=slots,
                                                           target_slots=slots, n_tokens=4))
    on_subject = {int(subject.source_slots[i]): str(subject.decoded[i, j]) for i, j in subject.diagonal()}
    assert all("-> France" in on_subject[s] for s in (0, 4, 9, 13)), on_subject
    answer = workbench.patchscope(name, PatchscopeRequest(prompt, source_slots=slots, target_slots=slots, n_tokens=4))
    on_answer = {int(answer.source_slots[i]): str(answer.decoded[i, j]) for i, j in answer.diagonal()}
    assert on_answer[26].startswith(" Paris") and on_answer[30].startswith(" Paris"), on_answer
    assert not any("Paris" in on_answer[s] for s in (0, 4, 9, 13)), on_answer  # the early states do not hold it
    own = tracing.forward_logits(model, encoded.ids)[-1]
    assert answer.top_ids[answer.diagonal()[-1]][0] == int(own.argmax())  # slot L read at slot L: the output
