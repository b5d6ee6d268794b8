"""Tuned lens: zero translators are the logit lens, training lowers held-out KL, stop/resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import corpus, lenses, prompts, tracing
from workbench.analyses import tuned_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.analyses.tuned_lens import TunedLensConfig
from workbench.errors import BadRequest
from workbench.lens_training import LensTrainer

CONFIG = TunedLensConfig(chunk_tokens=32, lr=3e-3)


def _trainer(model, path, config=CONFIG, chunks=None):
    chunks = chunks or corpus.chunks(model.tokenizer, config.corpus, "train", config.chunk_tokens, limit=40)
    return LensTrainer(model, config, path, chunks, lambda ids: tracing.residual_stream(model, ids).resid,
                       checkpoint_every=3)


def test_zero_translators_equal_the_logit_lens(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, "The capital of France is", workbench.settings).ids
    resid = tracing.residual_stream(model, ids).resid
    zero = lenses.AffineLens(model.info.n_layers, model.info.d_model)
    torch.testing.assert_close(lenses.lens_logits(model, zero, resid), model.decode(resid), rtol=0, atol=0)


def test_translator_is_affine_per_layer():
    translators = lenses.AffineLens(2, 3)
    with torch.no_grad():
        translators.weight[1] = torch.eye(3) * 2
        translators.bias[1] = torch.tensor([1.0, 0.0, -1.0])
    h = torch.arange(12.0).view(2, 2, 3)
    out = translators(h)
    torch.testing.assert_close(out[0], h[0])
    torch.testing.assert_close(out[1], 3 * h[1] + torch.tensor([1.0, 0.0, -1.0]))


def test_training_lowers_held_out_kl(workbench, tiny_dirs, tmp_path):
    name = str(tiny_dirs["llama"])
    model = workbench.model(name)
    trainer = _trainer(model, tmp_path / "lens.pt")
    status = trainer.train(40)
    assert status.state == "done" and status.step == 40
    held_out = [torch.tensor(c) for c in corpus.chunks(model.tokenizer, CONFIG.corpus, "heldout", 32, limit=4)]
    translators, step = trainer.snapshot()
    request = tuned_lens.LensComparisonRequest("The capital of France is", " Paris", CONFIG, step, 4)
    result = tuned_lens.compare(model, translators, request, held_out,
                                lambda ids: tracing.residual_stream(model, ids).resid,
                                prompts.encode(model, request.prompt, workbench.settings).ids,
                                ("The", " capital", " of", " France", " is"),
                                prompts.single_token_id(model, " Paris"))
    assert (result.kl_tuned[:-1] < result.kl_logit[:-1]).all()  # every translated layer improves on held-out
    assert result.kl_tuned[-1] == pytest.approx(0.0, abs=1e-9) and result.kl_logit[-1] == pytest.approx(0.0, abs=1e-9)
    assert result.top1_logit[-1] == 1.0 and result.top1_tuned[-1] == 1.0
    assert result.ppl_logit[-1] == pytest.approx(result.ppl_tuned[-1])
    lens = workbench.logit_lens(name, LogitLensRequest(request.prompt, target=" Paris"))
    np.testing.assert_allclose(result.prob_logit, lens.target_prob, rtol=1e-4, atol=1e-7)


def test_stop_and_resume_equals_uninterrupted(workbench, tiny_dirs, tmp_path):
    model = workbench.model(str(tiny_dirs["gpt2"]))
    straight = _trainer(model, tmp_path / "straight.pt")
    straight.train(6)
    first = _trainer(model, tmp_path / "resumed.pt")
    first.train(4)  # the checkpoint is written when training stops
    resumed = _trainer(model, tmp_path / "resumed.pt")  # a new process would do exactly this
    assert resumed.status().step == 4 and resumed.status().state == "stopped"
    resumed.train(6)
    for a, b in zip(straight.translators.parameters(), resumed.translators.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert resumed.status().losses == pytest.approx(straight.status().losses, rel=1e-6)


def test_background_training_can_be_stopped(workbench, tiny_dirs, tmp_path):
    model = workbench.model(str(tiny_dirs["llama"]))
    trainer = _trainer(model, tmp_path / "bg.pt")
    trainer.start(10_000)
    while trainer.status().step < 2:
        pass
    trainer.stop()
    status = trainer.status()
    assert status.state == "stopped" and 2 <= status.step < 10_000
    assert _trainer(model, tmp_path / "bg.pt").status().step == status.step  # checkpointed on stop


def test_service_flow_and_errors(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    config = TunedLensConfig(chunk_tokens=32)
    with pytest.raises(BadRequest, match="not been trained"):
        workbench.compare_lenses(name, "The capital of France is", config=config)
    trainer = workbench.tuned_lens_trainer(name, config)
    assert workbench.tuned_lens_trainer(name, config) is trainer  # one job per model and config
    trainer.train(3)
    result = workbench.compare_lenses(name, "The capital of France is", " Paris", config=config, eval_chunks=2)
    assert result.lens_step == 3 and result.eval_tokens > 0
    again = workbench.compare_lenses(name, "The capital of France is", " Paris", config=config, eval_chunks=2)
    assert again.kl_tuned.tobytes() == result.kl_tuned.tobytes()  # from the store
    with pytest.raises(BadRequest):
        TunedLensConfig(chunk_tokens=2)
    with pytest.raises(BadRequest):
        workbench.start_tuned_lens_training(name, config, steps=0)


# ------------------------------------------------------------------ linear shortcut (Din et al. 2023)


def test_linear_shortcut_recovers_an_exact_affine_relation():
    """On streams where the last slot IS an affine map of each earlier slot, the fit finds that map."""
    torch.manual_seed(0)
    d, n_slots = 5, 3
    maps = [torch.randn(d, d, dtype=torch.float64) for _ in range(n_slots - 1)]
    shifts = [torch.randn(d, dtype=torch.float64) for _ in range(n_slots - 1)]
    final = torch.randn(4, 40, d, dtype=torch.float64)  # 4 chunks of 40 positions
    streams = []
    for chunk in final:
        earlier = [torch.linalg.solve(m, (chunk - b).T).T for m, b in zip(maps, shifts, strict=True)]  # A h + b = final
        streams.append(torch.stack([*earlier, chunk]).float())
    lens = lenses.fit_linear_shortcut(streams, n_slots, d, ridge=0.0)
    for slot in range(n_slots - 1):
        torch.testing.assert_close(lens.weight[slot].double() + torch.eye(d, dtype=torch.float64), maps[slot],
                                   rtol=0, atol=1e-4)
        torch.testing.assert_close(lens.bias[slot].double(), shifts[slot], rtol=0, atol=1e-4)


def test_linear_shortcut_with_identity_maps_is_the_logit_lens_and_ends_at_the_logits(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, "The capital of France is", workbench.settings).ids
    trace = tracing.residual_stream(model, ids)
    identity = lenses.AffineLens(model.info.n_layers, model.info.d_model)  # A_l = I (weight 0), b_l = 0
    logits = lenses.lens_logits(model, identity, trace.resid)
    torch.testing.assert_close(logits, model.decode(trace.resid), rtol=0, atol=0)
    fitted = lenses.fit_linear_shortcut([trace.resid], model.info.n_layers + 1, model.info.d_model)
    last = lenses.lens_logits(model, fitted, trace.resid)[-1]  # the last slot is never mapped: the model's logits
    torch.testing.assert_close(last, trace.logits, rtol=0, atol=1e-4)


def test_linear_shortcut_beats_the_logit_lens_on_held_out_text(workbench, tiny_dirs):
    from workbench.analyses.linear_shortcut import LinearShortcutRequest

    result = workbench.linear_shortcut(str(tiny_dirs["llama"]), LinearShortcutRequest(
        "The capital of France is", " Paris", chunk_tokens=32, fit_chunks=40, eval_chunks=4))
    assert result.lens_name == "linear shortcut" and result.lens_step == 0
    assert result.kl_tuned[-1] == pytest.approx(0.0, abs=1e-9) and result.top1_tuned[-1] == 1.0
    assert result.kl_tuned[:-1].mean() < result.kl_logit[:-1].mean()  # fitted maps help on unseen text


def test_linear_shortcut_ridge_shrinks_toward_the_logit_lens():
    """The ridge pulls A_l toward the identity (the logit lens), never toward zero: a huge ridge gives
    weight ~0 (A = I) and bias ~0, and any ridge leaves an exact identity relation exact."""
    torch.manual_seed(1)
    d, n_slots = 6, 3
    streams = [torch.randn(n_slots, 50, d) for _ in range(3)]
    huge = lenses.fit_linear_shortcut(streams, n_slots, d, ridge=1e9)
    assert huge.weight.abs().max() < 1e-6 and huge.bias.abs().max() < 1e-6
    same = torch.randn(50, d)
    exact = lenses.fit_linear_shortcut([torch.stack([same, same, same])], n_slots, d, ridge=1.0)
    assert exact.weight.abs().max() < 1e-5 and exact.bias.abs().max() < 1e-5


def test_batched_fitting_states_equal_one_sequence_at_a_time(workbench, tiny_dir):
    from workbench.analyses.linear_shortcut import _all_slots

    model = workbench.model(str(tiny_dir))
    chunks = tuned_lens.corpus_chunks(model, "python-reference", "train", 16, 3)
    batch = tracing.reduce_slots_batch(model, torch.stack(chunks).tolist(), _all_slots)  # (batch, slot, seq, d)
    for row, ids in zip(batch, chunks, strict=True):
        torch.testing.assert_close(row, tracing.residual_stream(model, ids).resid, rtol=1e-5, atol=1e-5)


def test_lens_comparison_reports_the_trajectory_first_then_each_held_out_chunk(workbench, tiny_dir):
    from workbench.analyses import linear_shortcut
    from workbench.analyses.linear_shortcut import LinearShortcutRequest

    request = LinearShortcutRequest("The capital of France is", " Paris", chunk_tokens=16, fit_chunks=8,
                                    eval_chunks=3)
    partials = []
    result = workbench.run(linear_shortcut.ANALYSIS, str(tiny_dir), request, on_partial=partials.append)
    assert [p.eval_tokens for p in partials] == [0, result.eval_tokens // 3, 2 * result.eval_tokens // 3]
    assert np.isnan(partials[0].kl_tuned).all()  # no held-out numbers before a chunk has run
    for partial in partials:  # the prompt's trajectory is final from the first report on
        np.testing.assert_array_equal(partial.prob_tuned, result.prob_tuned)
        np.testing.assert_array_equal(partial.top_logit, result.top_logit)
    assert linear_shortcut.ANALYSIS.figure("held_out", partials[0]).layout.annotations[0].text.startswith("No held-out")
