"""Lenses: decoding residual-stream states into next-token distributions, in one place.

Owns the ``Unembed`` (the model's final norm, then its unembedding, then the final logit
soft-cap where the architecture sets one, e.g. Gemma), usable inside an nnsight trace (on the
model's envoys, so the decode runs where the trace runs, NDIF included) and on plain tensors;
the lenses as transforms ``T_l`` applied to slot ``l`` before the ``Unembed``, in the spirit of
the tuned-lens library's ``Lens``:

* ``LogitLens``: the identity (nostalgebraist 2020, "interpreting GPT: the logit lens");
* ``AffineLens``: ``h + A_l h + b_l`` per slot, zero-initialised so that the untrained lens is the
  logit lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned
  Lens"; the same form carries the linear shortcuts of Din et al. 2023, "Jump to Conclusions",
  fitted by ``fit_linear_shortcut`` and, between any two slots, ``fit_linear_shortcuts_between``,
  and the Jacobian lens of anthropics/jacobian-lens, ``fit_jacobian_lens``: ``J_l h`` with the
  corpus-averaged Jacobian ``J_l = E[d h_L / d h_l]``, i.e. weight ``J_l - I`` and bias 0);

and the formulas every lens shares: one KL divergence, one soft-cap, and the in-trace reduction
of the logit lens (top-k, KL to the final distribution, a target's rank), which the trace calls
so only small statistics leave it. Axes as in ``workbench.axes``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

LENS_BUDGET_BYTES = 256 << 20  # decoded logits held at once by the in-trace logit lens


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities (clamped at 0 against rounding)."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` when the model sets a cap, else the logits unchanged."""
    return torch.tanh(logits / cap) * cap if cap else logits


@dataclass(frozen=True)
class Unembed:
    """final norm -> unembedding -> soft-cap, on whatever ``final_norm`` and ``unembed`` are:
    the model's envoys inside a trace (``Unembed.in_trace``) or its modules (``model_unembed``)."""

    final_norm: Callable
    unembed: Callable
    softcap: float | None = None

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        """(..., d_model) states -> (..., vocab) float32 logits."""
        return soft_cap(self.unembed(self.final_norm(resid)).float(), self.softcap)

    @classmethod
    def in_trace(cls, lm, softcap: float | None) -> Unembed:
        """Inside ``lm.trace``: decode on the model's renamed envoys (``final_norm``, ``unembed``)."""
        return cls(lm.final_norm, lm.unembed, softcap)


def _frozen(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` as a function whose parameters are detached constants (no weight gradients)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return module(x)
        params = {name: p.detach() for name, p in module.named_parameters()}
        return torch.func.functional_call(module, params, (x,))

    return call


def model_unembed(model) -> Unembed:
    """The ``Unembed`` of a loaded model on tensors (its weights frozen)."""
    return Unembed(_frozen(model.module(model.spec.final_norm)), _frozen(model.module(model.spec.unembed)),
                   model.info.logit_softcap)


def decode(model, resid: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """(..., d_model) residual states -> (..., vocab) logits on the CPU, through ``model_unembed``.

    ``grad=True`` keeps the autograd graph w.r.t. ``resid`` (for training lenses); the model's
    weights enter as detached constants, so they never accumulate gradients."""
    with model.lock, torch.set_grad_enabled(grad):
        return model_unembed(model)(resid.to(model.device)).float().cpu()


# ------------------------------------------------------------------------------ lenses as transforms


class LogitLens:
    """The identity transform: each slot decoded as it is."""

    name = "logit"

    def __call__(self, resid: torch.Tensor, slots: slice = slice(None)) -> torch.Tensor:
        return resid


class AffineLens(torch.nn.Module):
    """``h + A_l h + b_l`` for each of ``n_slots`` slots; zero-initialised (the identity)."""

    name = "affine"

    def __init__(self, n_slots: int, d_model: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n_slots, d_model, d_model))  # A_l: (slot, out, in)
        self.bias = torch.nn.Parameter(torch.zeros(n_slots, d_model))  # b_l: (slot, d_model)

    def forward(self, resid: torch.Tensor, slots: slice = slice(None)) -> torch.Tensor:
        """resid (slot, seq, d_model) for the given slots -> translated, same shape."""
        weight, bias = self.weight[slots], self.bias[slots]
        return resid + torch.einsum("lsd,led->lse", resid, weight) + bias[:, None, :]


def fit_linear_shortcut(residuals, n_slots: int, d_model: int, ridge: float = 1e-2) -> AffineLens:
    """The linear shortcuts of Din et al. (2023), "Jump to Conclusions": for every slot ``l < L``, the
    affine map ``h_L ~ A_l h_l + b_l`` that minimises the squared error over the given residual
    streams, in closed form (normal equations in float64, Cholesky solve), returned as an
    ``AffineLens`` (weight ``A_l - I``, bias ``b_l``), so it decodes and compares like the tuned lens.

    ``residuals`` yields (slot = L + 1, seq, d_model) streams. ``ridge`` is a relative Tikhonov term
    (times the mean diagonal of X^T X) that shrinks ``A_l`` toward the identity, i.e. toward the logit
    lens, rather than toward zero: with a few thousand tokens for d_model + 1 unknowns per output
    the plain solution over-fits. Measured on SmolLM2-135M (python-reference corpus, 64-token chunks,
    held-out mean KL over slots; the logit lens scores 17.8 nats): 1008 fitting tokens give 3.76 with
    ``ridge`` 1e-6 and 2.76 with 1e-2; 2016 tokens give 2.82 and 2.49; 4032 give 1.94 and 1.91;
    6048 give 1.83 and 1.84.
    ``ridge=0`` is the plain least-squares solution."""
    n_maps = n_slots - 1
    xtx = torch.zeros(n_maps, d_model + 1, d_model + 1, dtype=torch.float64)
    xty = torch.zeros(n_maps, d_model + 1, d_model, dtype=torch.float64)
    tokens = 0
    for resid in residuals:
        # each stream's products in its own precision (float32 states: 2.5x faster than float64 on a
        # CPU, relative error ~1e-6 per entry, far below the ridge), summed over streams in float64
        ones = torch.ones(n_maps, resid.shape[1], 1, dtype=resid.dtype)
        x = torch.cat([resid[:-1], ones], dim=-1)  # (map, seq, d_model + 1)
        y = resid[-1]  # (seq, d_model)
        xtx += (x.transpose(1, 2) @ x).double()
        xty += (x.transpose(1, 2) @ y).double()
        tokens += resid.shape[1]
    if tokens == 0:
        raise ValueError("no residual streams to fit the linear shortcut on")
    eye = torch.eye(d_model + 1, dtype=torch.float64)
    if ridge > 0:
        penalty = ridge * xtx.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None] * eye
        prior = torch.eye(d_model + 1, d_model, dtype=torch.float64)  # [I; 0]: A = I, b = 0 (the logit lens)
        xtx, xty = xtx + penalty, xty + penalty @ prior
    else:
        xtx = xtx + 1e-12 * eye  # only against an exactly singular system
    # Cholesky on the symmetric positive-definite normal equations (batched LU in MKL fails here
    # with two threads on some machines)
    solution = torch.cholesky_solve(xty, torch.linalg.cholesky(xtx))  # (map, d+1, d): [A^T; b]
    lens = AffineLens(n_maps, d_model)
    with torch.no_grad():
        lens.weight.copy_(solution[:, :d_model].transpose(1, 2) - torch.eye(d_model, dtype=torch.float64))
        lens.bias.copy_(solution[:, d_model])
    return lens


def _ridge_solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> torch.Tensor:
    """Solve the (batch, d + 1, d + 1) normal equations for (batch, d + 1, k * d) right-hand sides with
    the relative ridge of ``fit_linear_shortcut`` pulling every map toward ``A = I, b = 0``: the
    right-hand side holds ``k`` targets side by side, each (d + 1, d). Returns [A^T; b] blocks."""
    d1 = xtx.shape[-1]
    d = d1 - 1
    eye = torch.eye(d1, dtype=torch.float64)
    if ridge > 0:
        penalty = ridge * xtx.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None] * eye
        k = xty.shape[-1] // d
        prior = torch.eye(d1, d, dtype=torch.float64).repeat(1, k)  # [I; 0] per target
        xtx, xty = xtx + penalty, xty + penalty @ prior
    else:
        xtx = xtx + 1e-12 * eye
    return torch.cholesky_solve(xty, torch.linalg.cholesky(xtx))


ShortcutMaps = dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]  # (l, l') -> (A (out, in), b)


def fit_linear_shortcuts_between(residuals: Iterable[torch.Tensor], sources: Sequence[int], targets: Sequence[int],
                                 d_model: int, ridge: float = 1e-2) -> ShortcutMaps:
    """Din et al. (2023)'s linear shortcuts between any two slots: for every source slot ``l`` in
    ``sources`` and every target slot ``l'`` in ``targets`` with ``l' > l``, the affine map
    ``h_l' ~ A h_l + b`` of least squared error over the given residual streams (each
    (slot, seq, d_model)), with ``fit_linear_shortcut``'s relative ridge toward ``A = I, b = 0`` (the
    "skip" map ``h_l' := h_l``). Returns ``{(l, l'): (A (d_model, d_model), b (d_model,))}`` in float32.

    The normal equations of one source share ``X^T X``: it is accumulated once per source and
    factorised once (Cholesky) for all of that source's targets. Memory: one (d + 1)^2 matrix per
    source and one (d + 1) x d matrix per pair, in float64; choose the slots (a stride) so that this
    fits (SmolLM2, every third slot: 55 pairs, 150 MB)."""
    sources, targets = sorted(set(sources)), sorted(set(targets))
    pairs = {s: [t for t in targets if t > s] for s in sources}
    sources = [s for s in sources if pairs[s]]
    if not sources:
        raise ValueError("no target slot lies after any source slot")
    xtx = torch.zeros(len(sources), d_model + 1, d_model + 1, dtype=torch.float64)
    xty = [torch.zeros(d_model + 1, len(pairs[s]) * d_model, dtype=torch.float64) for s in sources]
    tokens = 0
    for resid in residuals:
        ones = torch.ones(len(sources), resid.shape[1], 1, dtype=resid.dtype)
        x = torch.cat([resid[sources], ones], dim=-1)  # (source, seq, d_model + 1)
        xtx += (x.transpose(1, 2) @ x).double()
        for i, s in enumerate(sources):
            y = resid[pairs[s]].permute(1, 0, 2).reshape(resid.shape[1], -1)  # (seq, target * d_model)
            xty[i] += (x[i].T @ y).double()
        tokens += resid.shape[1]
    if tokens == 0:
        raise ValueError("no residual streams to fit the shortcuts on")
    maps = {}
    for i, s in enumerate(sources):
        solution = _ridge_solve(xtx[i:i + 1], xty[i][None], ridge)[0]  # (d + 1, target * d)
        for j, t in enumerate(pairs[s]):
            block = solution[:, j * d_model:(j + 1) * d_model]
            maps[(s, t)] = (block[:d_model].T.float().contiguous(), block[d_model].float().contiguous())
    return maps


def apply_map(resid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``A h + b`` for states (..., d_model), with ``A`` (out, in)."""
    return resid @ weight.T + bias


# ------------------------------------------------------------------------------ the Jacobian lens

JACOBIAN_SKIP_FIRST = 16  # leading positions left out of the average (attention sinks), as in jacobian-lens


def jacobian_positions(seq_len: int, skip_first: int = JACOBIAN_SKIP_FIRST) -> torch.Tensor:
    """(seq,) bool: the positions a chunk's Jacobian averages over. As in anthropics/jacobian-lens
    (``valid_position_mask``): the first ``skip_first`` positions (attention sinks, atypical states)
    and the last one are left out. A chunk too short for that keeps its later half (minus the last)."""
    skip = min(skip_first, max(0, (seq_len - 1) // 2))
    mask = torch.zeros(seq_len, dtype=torch.bool)
    mask[skip:seq_len - 1] = True
    if not mask.any():
        raise ValueError(f"a chunk of {seq_len} tokens leaves no position to average the Jacobian over")
    return mask


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def slot_jacobians(model, token_ids: torch.Tensor, positions: torch.Tensor, dim_batch: int = 8,
                   progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """(slot = L + 1, d_model out, d_model in) float32: the Jacobian estimate of one sequence for every slot.

    The estimator of anthropics/jacobian-lens (``jacobian_for_prompt``, ``position_reduction=
    "future_sum"``, their default and the paper's): for output dimension ``i``, a one-hot cotangent on
    ``h_L[:, i]`` at every valid position at once is pulled back to every slot in ONE backward pass;
    at source position ``p`` that gives row ``i`` of ``sum_{p' valid, p' >= p} d h_L[p'] / d h_l[p]``
    (so cross-position terms, through attention, ARE included), which is then averaged over the
    valid source positions ``p``. ``dim_batch`` output dimensions share one backward: the sequence
    is replicated ``dim_batch`` times in one forward (graph retained), row ``b`` carrying the
    cotangent of dimension ``start + b``, so ``ceil(d_model / dim_batch)`` backwards give every
    ``J_l`` at once. Slot L is included (its Jacobian is the identity: a check, not a shortcut).

    The forward holds the model's lock; the backward passes do not (they run on the retained graph
    only), so other sessions' traces interleave. ``progress(fraction)`` is called after each
    backward pass and may raise to cancel."""
    from workbench import interventions  # plain-torch hooks (interventions imports this module)

    n_layers, d_model = model.info.n_layers, model.info.d_model
    valid = positions.nonzero()[:, 0].to(model.device)
    if len(valid) == 0:
        raise ValueError("no valid position")
    batch = max(1, min(dim_batch, d_model))
    ids = token_ids.reshape(1, -1).expand(batch, -1).to(model.device)
    states: list[torch.Tensor] = []
    final: list[torch.Tensor] = []

    def leaf(x: torch.Tensor) -> torch.Tensor:  # slot 0, the block-0 input: the graph starts here
        x = x.detach().requires_grad_(True)
        states.append(x)
        return x

    def record(x: torch.Tensor) -> None:  # slot l = block l's input = block l - 1's output
        states.append(x)

    with model.lock, torch.enable_grad(), contextlib.ExitStack() as stack:
        stack.enter_context(interventions.site_hook(model, 0, "resid", leaf))
        for layer in range(1, n_layers):
            stack.enter_context(interventions.site_hook(model, layer, "resid", record))
        handle = interventions.block(model, n_layers - 1).register_forward_hook(
            lambda _m, _a, out: final.append(_first(out)))
        stack.callback(handle.remove)
        model.hf_model(ids, use_cache=False, logits_to_keep=1)
    target = final[0]  # (batch, seq, d_model): h_L
    inputs = [*states, target]
    jacobians = torch.zeros(n_layers + 1, d_model, d_model)
    cotangent = torch.zeros_like(target)
    rows = torch.arange(batch, device=target.device)
    n_passes = math.ceil(d_model / batch)
    for index, start in enumerate(range(0, d_model, batch)):
        n = min(batch, d_model - start)
        cotangent.zero_()
        cotangent[rows[:n, None], valid[None, :], (start + rows[:n])[:, None]] = 1.0
        grads = torch.autograd.grad(target, inputs, cotangent, retain_graph=index < n_passes - 1)
        for slot, grad in enumerate(grads):
            jacobians[slot, start:start + n] = grad[:n][:, valid].float().mean(1).cpu()
        del grads
        if progress is not None:
            progress((index + 1) / n_passes)
    return jacobians


def jacobian_lens(jacobians: torch.Tensor) -> AffineLens:
    """The ``AffineLens`` of averaged Jacobians (slot = L + 1, d, d): weight ``J_l - I``, bias 0, for the
    L slots below the last (the last slot is decoded as it is, like every lens)."""
    n_slots, d_model, _ = jacobians.shape
    lens = AffineLens(n_slots - 1, d_model)
    with torch.no_grad():
        lens.weight.copy_(jacobians[:-1].double() - torch.eye(d_model, dtype=torch.float64))
    return lens


def fit_jacobian_lens(model, chunks: Sequence[torch.Tensor], dim_batch: int = 8,
                      skip_first: int = JACOBIAN_SKIP_FIRST,
                      progress: Callable[[float, str], None] | None = None) -> tuple[AffineLens, int]:
    """The Jacobian lens (anthropics/jacobian-lens) of ``model`` on token-id ``chunks``: per slot ``l``,
    ``J_l = E[d h_L / d h_l]``, each chunk's estimate (``slot_jacobians`` on ``jacobian_positions``)
    averaged with equal weight over chunks (their running mean over prompts), decoded as
    ``Unembed(J_l h_l)``: their recipe adds no bias. Returns the ``AffineLens`` (weight ``J_l - I``,
    bias 0) and the number of positions averaged over. ``progress(fraction, message)`` after every
    backward pass (it may raise to cancel).

    Cost: ``d_model`` backward passes through every position of each chunk, i.e. about
    ``d_model * seq * 2 * params`` FLOPs: 150 CPU seconds per 64-token chunk for SmolLM2-135M on one
    thread (``bench/bench_lens_fitting.py``; the linear shortcut fits on 24 chunks in 11 s)."""
    if not chunks:
        raise ValueError("no chunks to fit the Jacobian lens on")
    total = None
    tokens = 0
    for k, ids in enumerate(chunks):
        positions = jacobian_positions(len(ids), skip_first)

        def report(fraction: float, k=k) -> None:
            if progress is not None:
                progress((k + fraction) / len(chunks), f"Jacobian lens: chunk {k + 1} of {len(chunks)}")

        jac = slot_jacobians(model, ids, positions, dim_batch, report).double()
        total = jac if total is None else total + jac
        tokens += int(positions.sum())
    return jacobian_lens(total / len(chunks)), tokens


def lens_logits(model, lens: Callable, resid: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """resid (slot = L + 1, seq, d_model) -> logits (slot, seq, vocab) under ``lens``; the last slot
    is the model's output and is never transformed."""
    with torch.set_grad_enabled(grad):
        translated = torch.cat([lens(resid[:-1]), resid[-1:]])
    return decode(model, translated, grad=grad)


# ------------------------------------------------------------------------------ in-trace reductions


def lens_chunk_slots(seq: int, vocab: int, budget_bytes: int = 0) -> int:
    """How many residual slots ``logit_lens_statistics`` decodes at once so that what it holds fits
    the budget: a chunk's logits and log-probabilities (while ``log_softmax`` runs), plus the final
    distribution's log-probabilities and probabilities: ``2 * chunk + 2`` (seq, vocab) float32 arrays."""
    per_array = max(1, seq * vocab * 4)
    arrays = (budget_bytes or LENS_BUDGET_BYTES) // per_array
    return max(1, (arrays - 2) // 2)


def logit_lens_statistics(unembed: Unembed, states: list, k: int, target_id: int | None, chunk: int,
                          position_targets: list[tuple[int, int]] | None = None) -> dict:
    """Decode ``states`` (slot tensors, each (1, seq, d_model)) in chunks of ``chunk`` slots, the
    last chunk first (so the final distribution is that very decode and KL(final || final) is
    exactly 0), and reduce each chunk to its top-k, KL to the final distribution and the target's
    log-probability and rank at the last position. Called inside a trace: only these lists of
    small tensors (last chunk first) need to leave it. ``position_targets`` ((position, id) pairs,
    e.g. several prompts packed into one sequence, each target at its prompt's last position) adds
    ``position_target_logprob`` and ``position_target_rank``, (slot, pair) per chunk, from the same decode.

    Memory (``lens_chunk_slots``): at most a chunk's logits and log-probabilities, the final
    log-probabilities and probabilities, and one (seq, vocab) buffer for the KL of one slot at a
    time; nothing of a chunk outlives it (the target is copied out, not viewed)."""
    out = {"top_ids": [], "top_logprobs": [], "kl": [], "target_logprob": [], "target_rank": [],
           "position_target_logprob": [], "position_target_rank": []}
    final = p_final = None
    for end in range(len(states), 0, -chunk):
        logprobs = torch.log_softmax(unembed(torch.cat(states[max(0, end - chunk):end])), dim=-1)  # (slot, seq, vocab)
        if final is None:
            final = logprobs[-1] if logprobs.shape[0] == 1 else logprobs[-1].clone()  # (seq, vocab)
            p_final = final.exp()
        top = logprobs.topk(k, dim=-1)
        out["top_ids"].append(top.indices)
        out["top_logprobs"].append(top.values)
        buffer = torch.empty_like(final)
        kls = []
        for slot in range(logprobs.shape[0]):  # KL(final || slot) = sum p (log p - log q), a slot at a time
            torch.sub(final, logprobs[slot], out=buffer)
            kls.append(buffer.mul_(p_final).sum(-1).clamp_min(0.0))
        del buffer
        out["kl"].append(torch.stack(kls))
        if target_id is not None:
            last = logprobs[:, -1]  # (slot, vocab)
            target = last[:, target_id].clone()
            out["target_logprob"].append(target)
            out["target_rank"].append((last > target[:, None]).sum(-1) + 1)
            del last  # a view: it would keep the chunk's log-probabilities alive into the next chunk
        if position_targets:
            positions = torch.tensor([p for p, _ in position_targets], device=logprobs.device)
            ids = torch.tensor([i for _, i in position_targets], device=logprobs.device)
            at = logprobs[:, positions]  # (slot, pair, vocab), a copy
            target = at[:, torch.arange(len(position_targets), device=logprobs.device), ids]  # (slot, pair)
            out["position_target_logprob"].append(target)
            out["position_target_rank"].append((at > target[..., None]).sum(-1) + 1)
            del at
        del logprobs, top
    return out


def last_position_probs(unembed: Unembed, states: list, wanted: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``states`` (slot tensors, each (1, d_model): the last position) -> the probabilities of the
    ``wanted`` ids, (slot, wanted) float64, and each slot's top-1 id, (slot,). Called inside a trace."""
    probs = torch.softmax(unembed(torch.cat(states)).double(), dim=-1)  # (slot, vocab)
    return probs[:, wanted], probs.argmax(dim=-1)
