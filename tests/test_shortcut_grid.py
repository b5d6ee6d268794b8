"""Shortcut grid (Din et al. 2023, maps l -> l'): identity maps are the skip baseline, l' = l is the model,
one skipped block equals ``tracing.skip_layers``, the last column is the logit lens / the linear shortcut."""

from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch

from tests.tiny_models import ARCHITECTURES, MATRIX_ARCHITECTURES
from workbench import lenses, prompts, registry, tracing
from workbench.analyses import ANALYSES, request_digest, request_json, shortcut_grid
from workbench.analyses.linear_shortcut import LinearShortcutRequest
from workbench.analyses.shortcut_grid import ShortcutGridRequest, grid_slots, run_from_slot
from workbench.errors import BadRequest

PROMPT = "When Mary and John went to the store, John gave a drink to"
REQUEST = ShortcutGridRequest(chunk_tokens=16, fit_chunks=8, eval_chunks=2)



@pytest.mark.parametrize("arch", ARCHITECTURES + MATRIX_ARCHITECTURES)
def test_same_slot_is_the_model_and_the_identity_map_is_the_skip(workbench, arch_dirs, arch):
    model = workbench.model(str(arch_dirs(arch)))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.residual_stream(model, ids)
    d = model.info.d_model
    for slot in range(model.info.n_layers + 1):  # l' = l: the model continued from its own state
        torch.testing.assert_close(run_from_slot(model, ids, slot, trace.resid[slot][None])[0], trace.logits,
                                   rtol=0, atol=1e-4)
    identity = lenses.apply_map(trace.resid[0], torch.eye(d), torch.zeros(d))
    assert torch.equal(identity, trace.resid[0])  # A = I, b = 0 is h_l' := h_l, bit for bit
    both = run_from_slot(model, ids, 2, torch.stack([identity, trace.resid[0]]))
    torch.testing.assert_close(both[0], both[1], rtol=0, atol=1e-6)


def test_skipping_one_block_equals_skip_layers(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    trace = tracing.residual_stream(model, ids)
    _, skipped = tracing.skip_layers(model, ids, list(range(model.info.n_layers)))
    for block in range(model.info.n_layers):  # h_{l+1} := h_l is block l skipped
        ours = run_from_slot(model, ids, block + 1, trace.resid[block][None])[0]
        torch.testing.assert_close(ours, skipped[block], rtol=0, atol=1e-4)


def test_identity_maps_give_the_skip_baseline(workbench, tiny_dirs, monkeypatch):
    def identity_maps(_streams, sources, targets, d_model, ridge=1e-2):
        list(_streams)  # the fitting pass still runs
        return {(s, t): (torch.eye(d_model), torch.zeros(d_model)) for s in sources for t in targets if t > s}

    monkeypatch.setattr(shortcut_grid, "fit_linear_shortcuts_between", identity_maps)
    result = workbench.run(shortcut_grid.ANALYSIS, str(tiny_dirs["gpt2"]), REQUEST)
    upper = np.triu(np.ones_like(result.kl_map, dtype=bool), 1)
    np.testing.assert_allclose(result.kl_map[upper], result.kl_skip[upper], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(result.top1_map[upper], result.top1_skip[upper])
    assert (result.kl_skip[upper] > 0).all()  # skipping blocks of a random model changes its output


def test_grid_ends_at_the_logit_lens_and_the_linear_shortcut(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    result = workbench.run(shortcut_grid.ANALYSIS, name, REQUEST)
    n_layers = workbench.model(name).info.n_layers
    assert result.slots.tolist() == grid_slots(n_layers) == list(range(n_layers + 1))
    assert result.slot_labels.tolist() == ["embed"] + [str(i) for i in range(n_layers)]
    upper = np.triu(np.ones_like(result.kl_map, dtype=bool), 1)
    for field in ("kl_map", "kl_skip", "top1_map", "top1_skip"):
        values = getattr(result, field)
        assert np.isnan(values[~upper]).all() and np.isfinite(values[upper]).all()
    assert ((result.top1_map[upper] >= 0) & (result.top1_map[upper] <= 1)).all()
    # the column l' = L: the skip is the logit lens, the fitted map is the linear shortcut (same data, same ridge)
    lens = workbench.linear_shortcut(name, LinearShortcutRequest(
        "The capital of France is", chunk_tokens=REQUEST.chunk_tokens, fit_chunks=REQUEST.fit_chunks,
        eval_chunks=REQUEST.eval_chunks))
    assert result.eval_tokens == lens.eval_tokens
    np.testing.assert_allclose(result.kl_skip[:-1, -1], lens.kl_logit[:-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.kl_map[:-1, -1], lens.kl_tuned[:-1], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(result.top1_skip[:-1, -1], lens.top1_logit[:-1], rtol=0, atol=1e-6)
    assert result.kl_map[upper].mean() < result.kl_skip[upper].mean()  # fitted maps beat skipping, on unseen text


def test_fit_between_recovers_an_exact_relation_and_equals_the_linear_shortcut():
    torch.manual_seed(0)
    d, n_slots = 4, 4
    a, b = torch.randn(d, d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    streams = []
    for _ in range(3):
        h = torch.randn(n_slots, 30, d, dtype=torch.float64)
        h[2] = h[0] @ a.T + b  # slot 2 is exactly affine in slot 0
        streams.append(h.float())
    maps = lenses.fit_linear_shortcuts_between(streams, [0, 1], [1, 2, 3], d, ridge=0.0)
    assert sorted(maps) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    torch.testing.assert_close(maps[(0, 2)][0].double(), a, rtol=0, atol=1e-4)
    torch.testing.assert_close(maps[(0, 2)][1].double(), b, rtol=0, atol=1e-4)
    shortcut = lenses.fit_linear_shortcut(streams, n_slots, d)  # maps to the last slot, default ridge
    between = lenses.fit_linear_shortcuts_between(streams, [0, 1, 2], [3], d)
    for slot in range(3):
        weight, bias = between[(slot, 3)]
        torch.testing.assert_close(weight, shortcut.weight[slot].detach() + torch.eye(d), rtol=0, atol=1e-5)
        torch.testing.assert_close(bias, shortcut.bias[slot].detach(), rtol=0, atol=1e-5)
    huge = lenses.fit_linear_shortcuts_between(streams, [0], [1], d, ridge=1e9)  # the ridge pulls toward the skip
    torch.testing.assert_close(huge[(0, 1)][0], torch.eye(d), rtol=0, atol=1e-6)


def test_slots_requests_and_refusals(workbench, tiny_dirs, monkeypatch):
    assert grid_slots(30) == [0, 4, 8, 12, 16, 20, 24, 28, 30]
    assert grid_slots(18) == [0, 3, 6, 9, 12, 15, 18] and grid_slots(30, 10) == [0, 10, 20, 30]
    assert grid_slots(3, 64) == [0, 3]
    for bad in (dict(chunk_tokens=4), dict(fit_chunks=0), dict(eval_chunks=17), dict(stride=-1), dict(corpus="x")):
        with pytest.raises(BadRequest):
            ShortcutGridRequest(**bad)
    rebuilt = shortcut_grid.ANALYSIS.request(json.loads(request_json(REQUEST)))
    assert rebuilt == REQUEST and request_digest(rebuilt) == request_digest(REQUEST)
    assert shortcut_grid.ANALYSIS in ANALYSES and registry.entry("shortcut_grid") is shortcut_grid.ANALYSIS
    assert importlib.import_module("workbench.figures.shortcut_grid").FIGURES is shortcut_grid.ANALYSIS.figures
    monkeypatch.setattr(shortcut_grid, "MAP_BUDGET_BYTES", 1000)
    with pytest.raises(BadRequest, match="larger stride"):
        workbench.run(shortcut_grid.ANALYSIS, str(tiny_dirs["llama"]), REQUEST)


def test_figures_draw_both_panels_and_keep_the_name_plain(workbench, tiny_dirs):
    result = workbench.run(shortcut_grid.ANALYSIS, str(tiny_dirs["qwen2"]), REQUEST)
    again = workbench.run(shortcut_grid.ANALYSIS, str(tiny_dirs["qwen2"]), REQUEST)
    assert again.kl_map.tobytes() == result.kl_map.tobytes()  # cached equals computed
    for name in ("kl", "top1"):
        fig = shortcut_grid.ANALYSIS.figure(name, result)
        assert len(fig.data) == 2 and all(trace.type == "heatmap" for trace in fig.data)
        assert np.array(fig.data[0].customdata, dtype=float).shape == result.kl_map.shape
    hostile = dataclasses.replace(result, model_name="<a href='x'>m</a>")
    assert "<a href" not in shortcut_grid.ANALYSIS.figure("kl", hostile).layout.title.text


def test_the_grid_section_of_the_tuned_lens_page(app, tiny_dirs):
    from tests.page_helpers import decode_plotly, open_page

    at = open_page(app, "app_pages/tuned_lens.py", str(tiny_dirs["llama"]))
    at.number_input(key="sg_fit").set_value(8)
    at.number_input(key="sg_eval").set_value(1)
    at.button(key="FormSubmitter:sg_form-Fit and evaluate").click().run()
    assert not at.exception and not at.error
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    grid = next(c for c in charts if "KL to the model's output" in c["layout"]["title"]["text"])
    mapped = decode_plotly(grid["data"][0]["customdata"])
    assert mapped.shape == (4, 4) and np.isnan(mapped[np.tril_indices(4)]).all()
    assert (mapped[np.triu_indices(4, 1)] > 0).all()


@pytest.mark.slow
def test_real_model_grid_beats_skipping_and_ends_at_the_logit_lens(workbench):
    """SmolLM2 (30 blocks, every 4th slot): the fitted maps keep more of the output than skipping the
    same blocks, and the skip column at the last slot is the logit lens."""
    request = ShortcutGridRequest(fit_chunks=24, eval_chunks=1)
    result = workbench.shortcut_grid("smollm2-135m", request)
    assert result.slots.tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 30]
    upper = np.triu(np.ones_like(result.kl_map, dtype=bool), 1)
    assert (result.kl_map[upper] < result.kl_skip[upper]).mean() > 0.8  # the map helps on most pairs
    assert np.nanmean(result.top1_map) > np.nanmean(result.top1_skip)
    lens = workbench.linear_shortcut("smollm2-135m", LinearShortcutRequest("The capital of France is", eval_chunks=1))
    np.testing.assert_allclose(result.kl_skip[:-1, -1], lens.kl_logit[result.slots[:-1]], rtol=1e-4)
    np.testing.assert_allclose(result.kl_map[:-1, -1], lens.kl_tuned[result.slots[:-1]], rtol=2e-2)
