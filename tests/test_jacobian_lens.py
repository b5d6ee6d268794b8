"""Jacobian lens (anthropics/jacobian-lens): J_L is the identity, J_l agrees with finite differences on
one token, the lens at the last slot is the model's output, and the fit averages chunk estimates,
on a tiny model of every architecture family (``tiny_models.ARCHITECTURES`` + ``MATRIX_ARCHITECTURES``)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import ARCHITECTURES, MATRIX_ARCHITECTURES
from workbench import interventions, lenses, prompts, tracing

ALL = ARCHITECTURES + MATRIX_ARCHITECTURES
PROMPT = "When Mary and John went to the store, John gave a drink to Mary. The capital of France is"



def _final_state_at(model, ids, slot, position, read, delta):
    """h_L at ``read`` with ``delta`` added to slot ``slot`` at ``position`` (plain forward, hooks)."""
    out = []

    def edit(x):
        x = x.clone()
        x[:, position] += delta
        return x

    handle = interventions.block(model, model.info.n_layers - 1).register_forward_hook(
        lambda _m, _a, o: out.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad(), interventions.site_hook(model, slot, "resid", edit):
            model.hf_model(ids[None], use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return out[0][0, read].double()


def _final_state(model, ids, slot: int, position: int, delta: torch.Tensor) -> torch.Tensor:
    """h_L at ``position`` with ``delta`` added to slot ``slot`` (< L) at ``position`` (plain forward)."""
    return _final_state_at(model, ids, slot, position, position, delta)


@pytest.mark.parametrize("arch", ALL)
def test_last_slot_is_the_identity_and_the_lens_ends_at_the_logits(workbench, arch_dirs, arch):
    model = workbench.model(str(arch_dirs(arch)))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    positions = lenses.jacobian_positions(len(ids))
    jac = lenses.slot_jacobians(model, ids, positions, dim_batch=16)
    n_layers, d = model.info.n_layers, model.info.d_model
    assert jac.shape == (n_layers + 1, d, d)
    torch.testing.assert_close(jac[-1], torch.eye(d), rtol=0, atol=0)  # d h_L / d h_L
    assert torch.isfinite(jac).all()
    assert (jac[:-1] - torch.eye(d)).abs().amax(dim=(1, 2)).min() > 1e-3  # the earlier slots are not the identity
    trace = tracing.residual_stream(model, ids)
    lens = lenses.jacobian_lens(torch.cat([jac[:-1], jac[-1:]]))
    logits = lenses.lens_logits(model, lens, trace.resid)
    torch.testing.assert_close(logits[-1], trace.logits, rtol=0, atol=1e-4)
    # the last slot's own Jacobian, applied, still decodes to the model's output
    mapped = lenses.apply_map(trace.resid[-1], jac[-1], torch.zeros(d))
    torch.testing.assert_close(model.decode(mapped), trace.logits, rtol=0, atol=1e-4)
    assert lens.bias.abs().max() == 0  # their recipe decodes J_l h with no bias


@pytest.mark.parametrize("arch", ALL)
def test_jacobian_matches_finite_differences_on_one_token(workbench, arch_dirs, arch):
    model = workbench.model(str(arch_dirs(arch)))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    position = len(ids) - 3
    only = torch.zeros(len(ids), dtype=torch.bool)
    only[position] = True  # one valid position: the estimate is exactly d h_L[p] / d h_l[p]
    jac = lenses.slot_jacobians(model, ids, only, dim_batch=8)
    d, eps = model.info.d_model, 1e-3
    generator = torch.Generator().manual_seed(0)
    for slot in (0, model.info.n_layers // 2 + 1):
        columns = torch.randperm(d, generator=generator)[:4]
        for j in columns.tolist():
            e = torch.zeros(d)
            e[j] = eps
            up, down = _final_state(model, ids, slot, position, e), _final_state(model, ids, slot, position, -e)
            fd = (up - down) / (2 * eps)
            scale = max(1.0, float(fd.abs().max()))
            torch.testing.assert_close(jac[slot][:, j].double(), fd, rtol=0, atol=2e-3 * scale)


def test_fit_averages_the_chunk_estimates_over_their_valid_positions(workbench, arch_dirs):
    model = workbench.model(str(arch_dirs("llama")))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    half = len(ids) // 2
    chunks = [ids[:half], ids[half:2 * half]]
    reports = []
    lens, tokens = lenses.fit_jacobian_lens(model, chunks, dim_batch=16, progress=lambda f, m: reports.append(f))
    each = [lenses.slot_jacobians(model, c, lenses.jacobian_positions(len(c)), dim_batch=16) for c in chunks]
    mean = (each[0].double() + each[1].double()) / 2
    d = model.info.d_model
    torch.testing.assert_close(lens.weight.double() + torch.eye(d, dtype=torch.float64), mean[:-1].float().double(),
                               rtol=0, atol=1e-6)
    assert tokens == sum(int(lenses.jacobian_positions(len(c)).sum()) for c in chunks)
    assert reports == sorted(reports) and reports[-1] == pytest.approx(1.0) and len(reports) == 2 * (d // 16)


def test_future_sum_includes_the_cross_position_terms(workbench, arch_dirs):
    """Two valid positions p < q: the estimate is (dL[p]/dl[p] + dL[q]/dl[p] + dL[q]/dl[q]) / 2, so it
    differs from the mean of the one-position estimates by half the cross term dL[q]/dl[p]."""
    model = workbench.model(str(arch_dirs("llama")))
    ids = prompts.encode(model, PROMPT, workbench.settings).ids
    p, q = len(ids) - 4, len(ids) - 2
    mask = lambda *ps: torch.isin(torch.arange(len(ids)), torch.tensor(ps))  # noqa: E731
    both = lenses.slot_jacobians(model, ids, mask(p, q))
    alone_p, alone_q = lenses.slot_jacobians(model, ids, mask(p)), lenses.slot_jacobians(model, ids, mask(q))
    slot, d, eps = 1, model.info.d_model, 1e-3
    cross = torch.stack([  # d h_L[q] / d h_1[p], column by column, by finite differences
        (_final_state_at(model, ids, slot, p, q, e) - _final_state_at(model, ids, slot, p, q, -e)) / (2 * eps)
        for e in torch.eye(d) * eps], dim=1)
    expected = (alone_p[slot].double() + alone_q[slot].double() + cross) / 2
    torch.testing.assert_close(both[slot].double(), expected, rtol=0, atol=2e-3)
    assert cross.abs().max() > 1e-3  # the cross term is really there


def test_positions_skip_the_sinks_and_the_last_token():
    mask = lenses.jacobian_positions(64)
    assert mask.sum() == 64 - 16 - 1 and not mask[:16].any() and not mask[-1]
    short = lenses.jacobian_positions(9)  # too short for 16: keeps its later half, minus the last
    assert short.nonzero()[:, 0].tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError):
        lenses.jacobian_positions(1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_model_jacobian_identity_finite_differences_and_logits(workbench, name):
    """On the real models (d_model 576 / 640): J_L = I, one column of J_l at a middle slot agrees with
    finite differences on one token, and the lens's last slot is the model's output."""
    model = workbench.model(name)
    ids = prompts.encode(model, "The capital of France is", workbench.settings).ids
    position = len(ids) - 1
    only = torch.zeros(len(ids), dtype=torch.bool)
    only[position] = True
    jac = lenses.slot_jacobians(model, ids, only, dim_batch=32)
    d = model.info.d_model
    torch.testing.assert_close(jac[-1], torch.eye(d), rtol=0, atol=0)
    # |h_L| reaches ~400 (SmolLM2): float32 rounding dominates a small step (column error 4% at
    # eps 3e-3, 0.05% at 0.3, falling as 1 / eps), so the step is large and compared as a vector
    slot, eps = model.info.n_layers // 2, 0.3
    for j in (0, d // 3):
        e = torch.zeros(d)
        e[j] = eps
        up, down = _final_state(model, ids, slot, position, e), _final_state(model, ids, slot, position, -e)
        fd = (up - down) / (2 * eps)
        assert fd.norm() > 1e-2
        assert (jac[slot][:, j].double() - fd).norm() / fd.norm() < 0.01
    trace = tracing.residual_stream(model, ids)
    logits = lenses.lens_logits(model, lenses.jacobian_lens(jac), trace.resid)
    torch.testing.assert_close(logits[-1], trace.logits, rtol=0, atol=1e-3)
