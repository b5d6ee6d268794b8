"""Patching invariants on tiny random models: activation patching, AtP, RelP, faithfulness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from workbench import interventions, prompt_pairs
from workbench.analyses import activation_patching, patching
from workbench.analyses import patching_faithfulness as faithfulness
from workbench.analyses.patching import PatchingRequest
from workbench.analyses.patching_faithfulness import FaithfulnessRequest
from workbench.errors import BadAnswer, BadPrompt, BadRequest
from workbench.interventions import HEADS, SITES, Rules
from workbench.store import ResultKey
from workbench.store.codec import same_result

PAIR = prompt_pairs.ioi_pair("When {io} and {s} went to the store, {s} gave a drink to", "Mary", "John")
ALL_RULES = Rules(ln=True, identity=True, half=True, attention=True)


def _encoded(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    return model, prompt_pairs.encode_pair(model, PAIR, workbench.settings)


def test_ioi_pair_swaps_the_repeated_subject():
    assert PAIR.clean == "When Mary and John went to the store, John gave a drink to"
    assert PAIR.corrupted == "When Mary and John went to the store, Mary gave a drink to"
    assert (PAIR.answer, PAIR.wrong) == (" Mary", " John")


def test_ioi_generator_gives_valid_single_token_pairs(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    pairs = prompt_pairs.ioi_pairs(model, 5, seed=1, settings=workbench.settings)
    assert len(pairs) == 5 and pairs == prompt_pairs.ioi_pairs(model, 5, seed=1, settings=workbench.settings)
    for pair in pairs:
        encoded = prompt_pairs.encode_pair(model, pair, workbench.settings)
        differs = (encoded.clean_ids != encoded.corrupted_ids).nonzero().flatten().tolist()
        assert len(differs) == 1  # exactly the repeated subject's position
        assert int(encoded.clean_ids[differs[0]]) == encoded.wrong_id
        assert int(encoded.corrupted_ids[differs[0]]) == encoded.answer_id


def test_invalid_pairs_get_clear_messages(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    longer = prompt_pairs.PromptPair(PAIR.clean, PAIR.corrupted + " the store", " Mary", " John")
    with pytest.raises(BadPrompt, match="same number of tokens"):
        prompt_pairs.encode_pair(model, longer, workbench.settings)
    multi = prompt_pairs.PromptPair(PAIR.clean, PAIR.corrupted, " Maryxyz", " John")
    with pytest.raises(BadAnswer, match="not one"):
        prompt_pairs.encode_pair(model, multi, workbench.settings)
    with pytest.raises(BadRequest, match="same token"):
        PatchingRequest(PAIR.clean, PAIR.corrupted, " Mary", " Mary")
    with pytest.raises(BadRequest, match="identical"):
        PatchingRequest(PAIR.clean, PAIR.clean, " Mary", " John")
    with pytest.raises(BadPrompt, match="empty"):
        workbench.patching(str(tiny_dirs["llama"]), PatchingRequest("  ", PAIR.corrupted, " Mary", " John"))


def test_patching_clean_into_clean_has_zero_effect(workbench, tiny_dir):
    model, pair = _encoded(workbench, tiny_dir)
    clean_acts, clean_logits = interventions.record(model, pair.clean_ids, (*SITES, HEADS))
    for layer in range(model.info.n_layers):
        for site in SITES:
            logits = interventions.patch_positions(model, pair.clean_ids, clean_acts[(site, layer)], layer, site)
            assert logits.shape == (len(pair.clean_ids), model.info.vocab_size)
            torch.testing.assert_close(logits, clean_logits.expand_as(logits), rtol=0, atol=1e-5)
        heads = interventions.patch_heads(model, pair.clean_ids, clean_acts[(HEADS, layer)], layer)
        torch.testing.assert_close(heads, clean_logits.expand_as(heads), rtol=0, atol=1e-5)


def test_batched_and_unbatched_activation_patching_agree(workbench, tiny_dir):
    model, pair = _encoded(workbench, tiny_dir)
    clean_acts, _ = interventions.record(model, pair.clean_ids, SITES)
    corrupted_acts, corrupted_logits = interventions.record(model, pair.corrupted_ids, SITES)
    layer = model.info.n_layers - 1
    for site in SITES:
        batched = interventions.patch_positions(model, pair.corrupted_ids, clean_acts[(site, layer)], layer, site)
        one_by_one = interventions.patch_positions(
            model, pair.corrupted_ids, clean_acts[(site, layer)], layer, site, max_batch=1
        )
        torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-5)
        # the same thing as a single unbatched run with one position written in
        position = len(pair.clean_ids) - 1
        source = corrupted_acts[(site, layer)].clone()
        source[position] = clean_acts[(site, layer)][position]
        whole = interventions.patch_positions(model, pair.corrupted_ids, source, layer, site, max_batch=1)
        torch.testing.assert_close(whole[position], batched[position], rtol=0, atol=1e-5)
        assert not torch.allclose(batched[position], corrupted_logits)  # the patch did something


def test_residual_patching_at_block_zero_is_exactly_the_swapped_token(workbench, tiny_dir):
    """Block 0's input differs only at the swapped name: patching it there restores m = 1, else 0."""
    result = workbench.patching(str(tiny_dir), PatchingRequest(PAIR.clean, PAIR.corrupted, " Mary", " John"))
    model, pair = _encoded(workbench, tiny_dir)
    swapped = int((pair.clean_ids != pair.corrupted_ids).nonzero()[0, 0])
    expected = np.zeros(len(pair.clean_ids))
    expected[swapped] = 1.0
    gap = result.ld_clean - result.ld_corrupted  # compare in logit-difference units (float32 noise ~1e-6)
    np.testing.assert_allclose(result.act_resid[0] * gap, expected * gap, atol=2e-5)
    # AtP and RelP are exactly zero where clean and corrupted activations are equal
    np.testing.assert_array_equal(np.delete(result.atp_resid[0], swapped), 0.0)
    np.testing.assert_array_equal(np.delete(result.relp_resid[0], swapped), 0.0)
    assert result.act_heads.shape == (model.info.n_layers, model.info.n_heads)


def test_relp_rules_leave_logits_unchanged(workbench, tiny_dir):
    model, pair = _encoded(workbench, tiny_dir)
    _, logits = interventions.record(model, pair.clean_ids, ())
    for rules in (Rules(ln=True), Rules(identity=True), Rules(half=True), Rules(attention=True), ALL_RULES):
        grad_pass = interventions.gradient_pass(model, pair.clean_ids, lambda lg: lg[0] - lg[1], SITES, rules)
        assert (grad_pass.logits - logits).abs().max() < 1e-5, rules
        assert model.hf_model.config._attn_implementation == "eager"  # AH swap undone
    # and a plain forward after the rules is untouched too (every hook removed)
    _, after = interventions.record(model, pair.clean_ids, ())
    assert torch.equal(after, logits)


def test_relp_conserves_relevance_at_every_layer(workbench, tiny_dir):
    model, pair = _encoded(workbench, tiny_dir)
    metric = patching.metric_fn(pair.answer_id, pair.wrong_id, ld_corrupted=0.3, ld_clean=1.3)
    grad_pass = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, ALL_RULES)
    ld = patching.logit_diff(grad_pass.logits, pair.answer_id, pair.wrong_id)
    # relevance at the output is the linear part of m: LD / (LD_clean - LD_corr)
    assert grad_pass.output_relevance == pytest.approx(ld / 1.0, rel=1e-5, abs=1e-7)
    assert grad_pass.metric == pytest.approx(ld - 0.3, rel=1e-5, abs=1e-6)
    for layer in range(model.info.n_layers):
        resid = (grad_pass.values[("resid", layer)].double() * grad_pass.grads[("resid", layer)].double()).sum()
        with_bias = float(resid) + float(grad_pass.bias_relevance[layer:].sum())
        assert with_bias == pytest.approx(grad_pass.output_relevance, rel=1e-4, abs=1e-6), layer
    # without the rules the plain gradient does not conserve relevance
    plain = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, Rules())
    gaps = [
        float((plain.values[("resid", i)].double() * plain.grads[("resid", i)].double()).sum())
        + float(plain.bias_relevance[i:].sum()) - plain.output_relevance
        for i in range(model.info.n_layers)
    ]
    assert max(abs(g) for g in gaps) > 1e-4


def test_atp_equals_finite_difference(workbench, tiny_dirs):
    """AtP is the first-order term of activation patching along the clean - corrupted direction:
    a central difference (m(a + eps d) - m(a - eps d)) / 2 eps at every site, layer and position.
    GPT-2 in float64 (Llama-family norms compute in float32 internally, too noisy for this)."""
    model, pair = _encoded(workbench, tiny_dirs["gpt2"])
    model.hf_model.double()
    try:
        _, clean_logits = interventions.record(model, pair.clean_ids, ())
        corrupted_acts, corrupted_logits = interventions.record(model, pair.corrupted_ids, SITES)
        clean_acts, _ = interventions.record(model, pair.clean_ids, SITES)
        ld = [patching.logit_diff(lg, pair.answer_id, pair.wrong_id) for lg in (clean_logits, corrupted_logits)]
        metric = patching.metric_fn(pair.answer_id, pair.wrong_id, ld_corrupted=ld[1], ld_clean=ld[0])
        atp = patching._attribution(model, pair.corrupted_ids, metric, SITES, clean_acts, Rules())
        eps = 1e-3
        for site in SITES:
            for layer in range(model.info.n_layers):
                corr, delta = corrupted_acts[(site, layer)], clean_acts[(site, layer)] - corrupted_acts[(site, layer)]

                def m(step, corr=corr, delta=delta, site=site, layer=layer):
                    logits = interventions.patch_positions(model, pair.corrupted_ids, corr + step * delta, layer, site)
                    return metric(logits.double()).numpy()

                finite = (m(eps) - m(-eps)) / (2 * eps)
                np.testing.assert_allclose(atp[site][layer], finite, rtol=1e-4, atol=1e-6)
                assert np.abs(finite).max() > 0 or site != "resid"
    finally:
        model.hf_model.float()


@pytest.mark.parametrize("fast", [True, False])
def test_partial_results_show_atp_and_relp_first_then_fill_in(workbench, tiny_dirs, monkeypatch, fast):
    """The patching run reports AtP and RelP before activation patching runs (its cells NaN), then
    one partial result per block (fast path) or per site and block (plain path), each with more
    cells done; the last cell-complete partial equals the final result."""
    from workbench.analyses import activation_patching as act_module

    if not fast:
        monkeypatch.setattr(act_module.patching_runs, "supports", lambda model: False)
    name = str(tiny_dirs["llama"])
    request = PatchingRequest(PAIR.clean, PAIR.corrupted, " Mary", " John")
    partials = []
    final = workbench.run(patching.ANALYSIS, name, request, on_partial=partials.append)
    first = partials[0]
    for component in patching.COMPONENTS:
        assert np.isnan(first.scores("act", component)).all()
        np.testing.assert_array_equal(first.scores("atp", component), final.scores("atp", component))
        np.testing.assert_array_equal(first.scores("relp", component), final.scores("relp", component))
    pending = [sum(int(np.isnan(p.scores("act", c)).sum()) for c in patching.COMPONENTS) for p in partials]
    assert len(partials) > 2 and pending == sorted(pending, reverse=True) and pending[-1] == 0
    for component in patching.COMPONENTS:  # what was shown is what is stored, cell by cell
        done = partials[-1].scores("act", component)
        np.testing.assert_array_equal(done, final.scores("act", component))
    cached = []
    workbench.run(patching.ANALYSIS, name, request, on_partial=cached.append)
    assert cached == []  # a cached result has nothing to fill in


def test_progress_can_cancel_and_nothing_is_stored(workbench, tiny_dirs):
    name = str(tiny_dirs["gpt2"])
    request = PatchingRequest(PAIR.clean, PAIR.corrupted, " Mary", " John", heads=False)

    def cancel(fraction, message):
        if fraction is not None and fraction > 0.3:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        workbench.patching(name, request, cancel)
    local = workbench.local_model(name)
    key = ResultKey(patching.NAME, patching.VERSION, local.digest, patching_digest(request))
    assert workbench.store.get_result(key, patching.PatchingResult) is None
    act = activation_patching.ANALYSIS
    act_key = ResultKey(act.name, act.version, local.digest, patching_digest(request.activation_request))
    assert workbench.store.get_result(act_key, act.Result) is None
    first = workbench.patching(name, request)
    again = workbench.patching(name, request)
    assert same_result(first, again)
    assert first.act_heads.shape == (0, 0)
    # toggling a RelP rule reuses the cached activation patching (progress would cancel it)
    toggled = workbench.patching(name, dataclasses.replace(request, ah_rule=True), cancel)
    np.testing.assert_array_equal(toggled.act_resid, first.act_resid)
    np.testing.assert_array_equal(toggled.atp_resid, first.atp_resid)
    assert not np.array_equal(toggled.relp_attn, first.relp_attn)


def patching_digest(request):
    from workbench.analyses import request_digest

    return request_digest(request)


def test_correlation_helpers():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert faithfulness.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert faithfulness.spearman(x, x**3) == pytest.approx(1.0)
    assert faithfulness.pearson(x, -x) == pytest.approx(-1.0)
    assert np.isnan(faithfulness.pearson(x, np.zeros(4)))
    assert faithfulness.topk_overlap(np.array([5.0, -4.0, 0.1, 0.2]), np.array([1.0, 0.0, 0.0, -3.0]), 2) == 0.5
    ties = np.array([1.0, 1.0, 1.0, 0.0])  # any two of the first three are a correct top-2
    assert faithfulness.topk_overlap(ties, np.array([0.0, 0.0, 2.0, 0.0]) + np.array([0, 1, 0, 0]), 2) == 1.0
    assert faithfulness.topk_overlap(ties, np.array([0.0, 0.0, 2.0, 3.0]), 2) == 0.5
    near = np.array([1.0, 0.99, 0.98, 0.5])  # within 5 %: a tie
    assert faithfulness.topk_overlap(near, np.array([0.0, 0.0, 2.0, 0.0]), 1) == 1.0
    assert faithfulness.topk_overlap(near, np.array([0.0, 0.0, 0.0, 2.0]), 1) == 0.0


def test_faithfulness_scoreboard(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    result = workbench.patching_faithfulness(name, FaithfulnessRequest(n_pairs=2, top_k=5))
    assert list(result.components) == ["resid", "attn", "mlp", "heads"]
    assert result.pearson.shape == (2, 4)
    assert np.isfinite(result.pearson).all() and (np.abs(result.pearson) <= 1 + 1e-9).all()
    assert ((result.topk_overlap >= 0) & (result.topk_overlap <= 1)).all()
    act, relp = result.points("relp", "resid")
    assert faithfulness.pearson(act, relp) == pytest.approx(result.pearson[1, 0])
    model = workbench.model(name)
    n_points = 2 * model.info.n_layers * model.info.n_heads  # the heads component of two pairs
    assert result.points("atp", "heads")[0].shape == (n_points,)


def test_scoreboard_updates_pair_by_pair(workbench, tiny_dirs):
    partials = []
    final = workbench.run(faithfulness.ANALYSIS, str(tiny_dirs["llama"]), FaithfulnessRequest(n_pairs=3),
                          on_partial=partials.append)
    assert [p.n_pairs for p in partials] == [2] and final.n_pairs == 3
    name = str(tiny_dirs["llama"])
    first_two = [workbench.patching(name, PatchingRequest(p.clean, p.corrupted, p.answer, p.wrong))
                 for p in workbench.ioi_pairs(name, 3)[:2]]  # from the cache: the pairs the run used
    expected = faithfulness.compute(final.model_name, first_two, FaithfulnessRequest(n_pairs=3))
    np.testing.assert_array_equal(partials[0].pearson, expected.pearson)
    np.testing.assert_array_equal(partials[0].act_points, expected.act_points)


def test_scoreboard_figures(workbench, tiny_dirs):
    from workbench.figures import patching_faithfulness as figures

    result = workbench.patching_faithfulness(str(tiny_dirs["qwen2"]), FaithfulnessRequest(n_pairs=2, heads=False))
    table = figures.correlation_table(result, "pearson")
    np.testing.assert_array_equal(np.asarray(table.data[0].z), result.pearson)
    grid = figures.scatter_grid(result)
    assert len(grid.data) == 2 * 3 * 2  # (points + y = x line) per estimator per component
    act, atp = result.points("atp", "attn")  # traces: resid (atp, line, relp, line), then attn
    np.testing.assert_array_equal(grid.data[4].x, act)
    np.testing.assert_array_equal(grid.data[4].y, atp)


def test_gradient_pass_works_on_frozen_weights(workbench, tiny_dirs):
    """Other analyses may freeze the shared model's weights; AtP/RelP must still get gradients."""
    model, pair = _encoded(workbench, tiny_dirs["gpt2"])
    metric = patching.metric_fn(pair.answer_id, pair.wrong_id, ld_corrupted=0.0, ld_clean=1.0)
    live = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, ALL_RULES)
    for param in model.hf_model.parameters():
        param.requires_grad_(False)
    frozen = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, ALL_RULES)
    assert not any(p.requires_grad for p in model.hf_model.parameters())  # flags restored
    for key, grad in live.grads.items():
        torch.testing.assert_close(frozen.grads[key], grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(frozen.bias_relevance, live.bias_relevance, rtol=1e-6, atol=1e-9)
