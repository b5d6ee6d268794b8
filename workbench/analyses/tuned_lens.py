"""Tuned lens: a learned affine translator per layer before the unembedding.

Belrose et al. (2023), "Eliciting Latent Predictions from Transformers with the Tuned
Lens"; Din et al. (2023), "Jump to Conclusions: Short-Cutting Transformers With Linear
Transformations".

For every residual slot ``l`` except the last (which is the model's output already):
``q_l = softmax(W_U · norm_f(h_l + A_l h_l + b_l))`` with ``A_l, b_l`` initialised to
zero (so the untrained tuned lens *is* the logit lens), trained to minimise
``KL(p_final || q_l)`` on a text corpus (Adam, gradient-norm clipping 1.0, constant
learning rate so training can stop and resume at any step). The comparison reports, per
layer, on held-out text: KL to the final distribution, top-1 agreement with the final
prediction and the perplexity of the true next token, for the logit and the tuned lens;
and on a prompt, the trajectory of a chosen token under both lenses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.errors import BadRequest
from workbench.lens_math import kl_divergence

NAME = "tuned_lens_comparison"
VERSION = 1


@dataclass(frozen=True)
class TunedLensConfig:
    """What identifies a trained lens (besides the model): training may stop and resume freely."""

    corpus: str = "python-reference"
    chunk_tokens: int = 64
    lr: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 8 <= self.chunk_tokens <= 512:
            raise BadRequest("chunk_tokens must be between 8 and 512.")
        if not 0 < self.lr <= 1:
            raise BadRequest("lr must be in (0, 1].")
        if self.grad_clip <= 0:
            raise BadRequest("grad_clip must be positive.")


class Translators(torch.nn.Module):
    """``h + A_l h + b_l`` for each of ``n`` residual slots; zero-initialised (identity)."""

    def __init__(self, n_slots: int, d_model: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n_slots, d_model, d_model))  # A_l, (slot, out, in)
        self.bias = torch.nn.Parameter(torch.zeros(n_slots, d_model))  # b_l

    def forward(self, resid: torch.Tensor, slots: slice = slice(None)) -> torch.Tensor:
        """resid (slot, seq, d_model) for the given slots -> translated, same shape."""
        weight, bias = self.weight[slots], self.bias[slots]
        return resid + torch.einsum("lsd,led->lse", resid, weight) + bias[:, None, :]


def tuned_logits(model, translators: Translators, resid: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """resid (layer = n_layers + 1, seq, d_model) -> logits (layer, seq, vocab); last slot untranslated."""
    with torch.set_grad_enabled(grad):
        translated = torch.cat([translators(resid[:-1]), resid[-1:]])
    return model.decode(translated, grad=grad)


def _slot_groups(n_slots: int, seq: int, vocab: int, budget_bytes: int = 512 << 20) -> list[slice]:
    per_slot = max(1, seq * vocab * 4 * 4)  # logits, log-probs, and their gradients
    size = max(1, min(n_slots, budget_bytes // per_slot))
    return [slice(start, min(start + size, n_slots)) for start in range(0, n_slots, size)]


def training_step(model, translators: Translators, optimizer: torch.optim.Optimizer,
                  resid: torch.Tensor, grad_clip: float) -> float:
    """One optimiser step on one chunk's residuals (layer, seq, d_model); returns the mean KL (nats)
    summed over translated layers, i.e. the loss. Layers are processed in memory-bounded groups."""
    n_translated, seq, _ = resid[:-1].shape
    target = torch.log_softmax(model.decode(resid[-1]), dim=-1)  # (seq, vocab), no grad
    target_probs = target.exp()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for group in _slot_groups(n_translated, seq, target.shape[-1]):
        translated = translators(resid[group], group)
        logq = torch.log_softmax(model.decode(translated, grad=True), dim=-1)  # (group, seq, vocab)
        loss = (target_probs * (target - logq)).sum(-1).mean(-1).sum()  # sum over layers of mean KL
        loss.backward()
        total += loss.detach().item()
    torch.nn.utils.clip_grad_norm_(translators.parameters(), grad_clip)
    optimizer.step()
    return total


def make_optimizer(translators: Translators, config: TunedLensConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(translators.parameters(), lr=config.lr)


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class LensComparisonRequest:
    prompt: str
    target: str = ""
    config: TunedLensConfig = field(default_factory=TunedLensConfig)
    lens_step: int = 0  # training steps of the lens compared (filled in by the service)
    eval_chunks: int = 4

    def __post_init__(self):
        if not 1 <= self.eval_chunks <= 64:
            raise BadRequest("eval_chunks must be between 1 and 64.")


@dataclass(frozen=True, eq=False)
class LensComparisonResult:
    model_name: str
    layer_labels: np.ndarray  # (layer,) str
    lens_step: int
    eval_tokens: int
    kl_logit: np.ndarray  # (layer,) mean KL(final || lens) on held-out tokens, nats
    kl_tuned: np.ndarray
    top1_logit: np.ndarray  # (layer,) fraction of held-out tokens where lens top-1 == final top-1
    top1_tuned: np.ndarray
    ppl_logit: np.ndarray  # (layer,) perplexity of the true next token under the lens
    ppl_tuned: np.ndarray
    tokens: np.ndarray  # (seq,) prompt tokens
    target_token: str
    prob_logit: np.ndarray  # (layer,) target probability at the prompt's last position; (0,) without target
    prob_tuned: np.ndarray
    top_logit: np.ndarray  # (layer,) str: top-1 token at the last position
    top_tuned: np.ndarray

    def __post_init__(self):
        n = len(self.layer_labels)
        for name in ("kl_logit", "kl_tuned", "top1_logit", "top1_tuned", "ppl_logit", "ppl_tuned",
                     "top_logit", "top_tuned"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"LensComparisonResult.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        expected = (n,) if self.target_token else (0,)
        if self.prob_logit.shape != expected or self.prob_tuned.shape != expected:
            raise ValueError("LensComparisonResult target trajectories must match the layers (or be empty)")


RESULT_TYPE = LensComparisonResult


@dataclass
class _Totals:
    kl: torch.Tensor
    top1: torch.Tensor
    nll: torch.Tensor


def held_out_statistics(logits: torch.Tensor, next_ids: torch.Tensor, totals: _Totals | None) -> _Totals:
    """Accumulate per-layer sums over one chunk; logits (layer, seq, vocab), next_ids (seq - 1,)."""
    logp = torch.log_softmax(logits.double(), -1)
    final = logp[-1]
    kl = kl_divergence(final, logp).sum(-1)  # (layer,)
    top1 = (logp.argmax(-1) == final.argmax(-1)).double().sum(-1)
    nll = -logp[:, :-1].gather(-1, next_ids.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1).sum(-1)
    if totals is None:
        return _Totals(kl, top1, nll)
    return _Totals(totals.kl + kl, totals.top1 + top1, totals.nll + nll)


def compare(
    model,
    translators: Translators,
    request: LensComparisonRequest,
    held_out: list[torch.Tensor],
    residuals: Callable[[torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor,
    tokens: tuple[str, ...],
    target_id: int | None,
    progress: Callable[[float | None, str], None] = lambda f, m: None,
) -> LensComparisonResult:
    """Held-out statistics for both lenses over ``held_out`` chunks (token-id tensors), and the
    target trajectory on the prompt. ``residuals(ids) -> (layer, seq, d_model)``."""
    logit_totals = tuned_totals = None
    n_tokens = n_next = 0
    with torch.no_grad():
        for i, ids in enumerate(held_out):
            resid = residuals(ids)
            logit_totals = held_out_statistics(model.decode(resid), ids[1:], logit_totals)
            tuned_totals = held_out_statistics(tuned_logits(model, translators, resid), ids[1:], tuned_totals)
            n_tokens, n_next = n_tokens + len(ids), n_next + len(ids) - 1
            progress((i + 1) / (len(held_out) + 1), f"Held-out chunk {i + 1} of {len(held_out)}")
        resid = residuals(prompt_ids)[:, -1:]  # (layer, 1, d_model)
        logit_last = torch.softmax(model.decode(resid)[:, 0].double(), -1)
        tuned_last = torch.softmax(tuned_logits(model, translators, resid)[:, 0].double(), -1)
    decode = lambda ids: np.array([model.tokenizer.decode([int(i)]) for i in ids])  # noqa: E731
    n_layers = logit_last.shape[0]
    has_target = target_id is not None
    return LensComparisonResult(
        model_name=model.name,
        layer_labels=np.array(["embed"] + [str(i) for i in range(n_layers - 1)]),
        lens_step=request.lens_step,
        eval_tokens=n_tokens,
        kl_logit=(logit_totals.kl / n_tokens).float().numpy(),
        kl_tuned=(tuned_totals.kl / n_tokens).float().numpy(),
        top1_logit=(logit_totals.top1 / n_tokens).float().numpy(),
        top1_tuned=(tuned_totals.top1 / n_tokens).float().numpy(),
        ppl_logit=torch.exp(logit_totals.nll / n_next).float().numpy(),
        ppl_tuned=torch.exp(tuned_totals.nll / n_next).float().numpy(),
        tokens=np.array(tokens),
        target_token=request.target if has_target else "",
        prob_logit=logit_last[:, target_id].float().numpy() if has_target else np.zeros(0, np.float32),
        prob_tuned=tuned_last[:, target_id].float().numpy() if has_target else np.zeros(0, np.float32),
        top_logit=decode(logit_last.argmax(-1)),
        top_tuned=decode(tuned_last.argmax(-1)),
    )
