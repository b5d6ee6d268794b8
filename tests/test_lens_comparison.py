"""The lens comparison (workbench.analyses.lens_comparison): every lens on the same states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.page_helpers import decode_plotly, open_page
from workbench import tracing
from workbench.analyses import lens_comparison, linear_shortcut, tuned_lens
from workbench.analyses.lens_comparison import LensComparisonRequest
from workbench.errors import BadRequest
from workbench.lenses import AffineLens, decode, lens_logits

ALL_BUT_TUNED = ("logit", "linear_shortcut", "jacobian", "patchscope")


def _model_distribution(model, prompt: str) -> torch.Tensor:
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.softmax(model.hf_model(ids).logits[0, -1].double(), -1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma3_text"])
def test_every_lens_at_the_last_layer_is_the_model(workbench, tiny_dirs, arch):
    model_name = str(tiny_dirs[arch])
    request = LensComparisonRequest("The capital of France is", lenses=ALL_BUT_TUNED, eval_chunks=1)
    result = workbench.run(lens_comparison.ANALYSIS, model_name, request)
    model = workbench.model(model_name)
    own = _model_distribution(model, request.prompt)
    top = own.topk(request.k)
    for i, name in enumerate(result.lens_names):
        np.testing.assert_allclose(result.top_probs[i, -1], top.values.float().numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=str(name))
    # on held-out text the last slot is the final distribution itself: KL 0, agreement 1 (logit, fitted lenses)
    measured = [i for i, name in enumerate(result.lens_names) if name != "patchscope"]
    np.testing.assert_allclose(result.kl[measured, -1], 0.0, atol=1e-5)
    np.testing.assert_allclose(result.top1[measured, -1], 1.0)
    assert np.isnan(result.kl[list(result.lens_names).index("patchscope")]).all()
    assert result.eval_tokens > 0
    # fitted lenses say what they cost; the logit lens and the Patchscope fit nothing
    costs = dict(zip(result.lens_names, result.fit_tokens, strict=True))
    assert costs["logit"] == costs["patchscope"] == 0
    assert costs["linear_shortcut"] > 0 and costs["jacobian"] > 0


def test_logit_row_equals_the_logit_lens_and_identity_maps(workbench, tiny_dirs):
    """The logit row is the identity transform: equal to decoding the residual stream directly, and an
    affine lens with zero weights (identity map) gives the same held-out numbers."""
    model_name = str(tiny_dirs["llama"])
    request = LensComparisonRequest("When Mary and John went out, John gave it to", lenses=("logit",), eval_chunks=2)
    result = workbench.run(lens_comparison.ANALYSIS, model_name, request)
    model = workbench.model(model_name)
    ids = model.tokenizer(request.prompt, return_tensors="pt").input_ids[0]
    resid = tracing.residual_stream(model, ids).resid[:, -1:]
    probs = torch.softmax(decode(model, resid)[:, 0].double(), -1)
    np.testing.assert_allclose(result.top_probs[0, :, 0], probs.max(-1).values.float().numpy(), rtol=1e-5)
    identity = AffineLens(model.info.n_layers, model.info.d_model)
    np.testing.assert_allclose(
        torch.softmax(lens_logits(model, identity, resid)[:, 0].double(), -1).numpy(), probs.numpy(), atol=1e-7)
    # held-out numbers equal the tuned-lens comparison's logit-lens numbers on the same chunks
    held = tuned_lens.corpus_chunks(model, request.corpus, "heldout", request.chunk_tokens, request.eval_chunks)
    reference = tuned_lens.compare(model, identity, tuned_lens.LensComparisonRequest(request.prompt), held,
                                   residuals=lambda x: tracing.residual_stream(model, x).resid, prompt_ids=ids,
                                   tokens=tuple(), target_id=None)
    np.testing.assert_allclose(result.kl[0], reference.kl_logit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.top1[0], reference.top1_logit)
    np.testing.assert_allclose(result.ppl[0], reference.ppl_logit, rtol=1e-5)


def test_fitted_lenses_are_stored_and_reused(workbench, tiny_dirs):
    model_name = str(tiny_dirs["llama"])
    first = workbench.run(lens_comparison.ANALYSIS, model_name,
                          LensComparisonRequest("one prompt", lenses=("logit", "linear_shortcut"), eval_chunks=1))
    second = workbench.run(lens_comparison.ANALYSIS, model_name,
                           LensComparisonRequest("another prompt", lenses=("linear_shortcut",), eval_chunks=1))
    # the second comparison loaded the stored lens: the same fitting record, not a new fit
    assert second.fit_seconds[0] == first.fit_seconds[1] and second.fit_tokens[0] == first.fit_tokens[1]
    # the linear-shortcut row equals the linear-shortcut analysis (same stored lens, same held-out chunk)
    shortcut = workbench.run(linear_shortcut.ANALYSIS, model_name,
                             linear_shortcut.LinearShortcutRequest("another prompt", eval_chunks=1))
    np.testing.assert_allclose(second.kl[0], shortcut.kl_tuned, rtol=1e-5, atol=1e-6)


def test_partials_come_first_with_the_prompt_grid(workbench, tiny_dirs):
    model_name = str(tiny_dirs["llama"])
    partials = []
    request = LensComparisonRequest("The capital of France is", lenses=("logit",), eval_chunks=3)
    result = workbench.run(lens_comparison.ANALYSIS, model_name, request, on_partial=partials.append)
    assert [p.eval_tokens for p in partials][0] == 0 and len(partials) == 3
    np.testing.assert_array_equal(partials[0].top_probs, result.top_probs)
    assert np.isnan(partials[0].kl).all() and not np.isnan(result.kl).any()


def test_bad_requests():
    with pytest.raises(BadRequest, match="Unknown lens"):
        LensComparisonRequest("x", lenses=("logit", "crystal ball"))
    with pytest.raises(BadRequest, match="each once"):
        LensComparisonRequest("x", lenses=("logit", "logit"))
    with pytest.raises(BadRequest, match="tuned_step"):
        LensComparisonRequest("x", lenses=("logit",), tuned_step=3)
    with pytest.raises(BadRequest, match="k must"):
        LensComparisonRequest("x", k=0)


def test_figures_and_summary(workbench, tiny_dirs):
    model_name = str(tiny_dirs["gpt2"])
    result = workbench.run(lens_comparison.ANALYSIS, model_name,
                           LensComparisonRequest("a b c", lenses=("logit", "patchscope"), eval_chunks=1))
    grid = lens_comparison.ANALYSIS.figure("grid", result)
    assert list(grid.layout.yaxis.ticktext) == ["logit lens", "Patchscope"]
    assert grid.data[0].z.shape == (2, len(result.layer_labels))
    held = lens_comparison.ANALYSIS.figure("held_out", result)
    assert "not measured on held-out text: Patchscope" in held.layout.title.text
    assert len(held.data) == 3  # the logit lens in three panels
    assert [s.metric for s in lens_comparison.ANALYSIS.summary(result)] == [
        "Held-out KL(final ‖ logit lens) (nats)", "Held-out top-1 agreement, logit lens"]


def test_lens_comparison_page(app, tiny_dirs):
    at = open_page(app, "app_pages/lens_comparison.py", str(tiny_dirs["llama"]))
    assert not at.exception
    at.multiselect(key="lc_lenses").set_value(["logit", "linear_shortcut", "patchscope"])
    at.number_input(key="lc_eval").set_value(1)
    at.button(key="FormSubmitter:lc_form-Compare lenses").click().run()
    assert not at.exception and not at.error
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    grid = next(c for c in charts if "Every lens" in c["layout"]["title"]["text"])
    assert grid["layout"]["yaxis"]["ticktext"] == ["logit lens", "linear shortcut", "Patchscope"]
    assert decode_plotly(grid["data"][0]["z"]).shape[0] == 3
    at.run()  # the stored linear shortcut now shows in the status box
    shown = [md.value.replace("\\", "") for md in at.markdown]  # ui.escape escapes the colon
    assert "linear shortcut: stored, fitted on 1512 tokens" in " ".join(shown)
    assert any(line.startswith("Jacobian lens: missing") for line in shown)


def test_tuned_lens_row_is_compared_at_its_trained_step(workbench, tiny_dirs):
    model_name = str(tiny_dirs["llama"])
    request = LensComparisonRequest("The capital of France is", lenses=("logit", "tuned"), chunk_tokens=32,
                                    eval_chunks=1)
    with pytest.raises(BadRequest, match="not been trained"):
        workbench.lens_comparison(model_name, request)
    config = tuned_lens.TunedLensConfig(chunk_tokens=32)
    workbench.tuned_lens_trainer(model_name, config).train(2)
    result = workbench.lens_comparison(model_name, request)
    assert list(result.lens_names) == ["logit", "tuned"]
    assert result.fit_tokens[1] == 2 * 32 and "trained 2 steps" in result.fit_note[1]
    # two Adam steps move the tuned lens off the logit lens, but not at the last slot
    assert not np.allclose(result.kl[0, :-1], result.kl[1, :-1])
    np.testing.assert_allclose(result.top_probs[1, -1], result.top_probs[0, -1], rtol=1e-5)
