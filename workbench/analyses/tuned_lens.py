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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from workbench import corpus, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import check_shapes, slot_labels
from workbench.errors import BadRequest
from workbench.lenses import AffineLens, decode, kl_divergence, lens_logits

NAME = "tuned_lens"  # until 2026-12: "tuned_lens_comparison"
VERSION = 3  # 3: byte tokens shown as <0x..>


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
    """The logit lens against one learned lens (its "tuned" fields: the tuned lens or a linear shortcut)."""

    model_name: str
    layer_labels: np.ndarray  # (slot,) str
    lens_name: str  # the learned lens: "tuned lens" or "linear shortcut"
    lens_step: int  # training steps of a tuned lens; 0 for a lens fitted in closed form
    eval_tokens: int
    kl_logit: np.ndarray  # (slot,) mean KL(final || lens) on held-out tokens, nats
    kl_tuned: np.ndarray
    top1_logit: np.ndarray  # (slot,) fraction of held-out tokens where lens top-1 == final top-1
    top1_tuned: np.ndarray
    ppl_logit: np.ndarray  # (slot,) perplexity of the true next token under the lens
    ppl_tuned: np.ndarray
    tokens: np.ndarray  # (seq,) prompt tokens
    target_token: str
    prob_logit: np.ndarray  # (slot,) target probability at the prompt's last position; (0,) without target
    prob_tuned: np.ndarray
    top_logit: np.ndarray  # (slot,) str: top-1 token at the last position
    top_tuned: np.ndarray

    def __post_init__(self):
        n = len(self.layer_labels)
        target = (n,) if self.target_token else (0,)
        check_shapes(self, {**{name: (n,) for name in ("kl_logit", "kl_tuned", "top1_logit", "top1_tuned", "ppl_logit",
                                                       "ppl_tuned", "top_logit", "top_tuned")},
                            "prob_logit": target, "prob_tuned": target})



@dataclass
class _Totals:
    kl: torch.Tensor
    top1: torch.Tensor
    nll: torch.Tensor


def held_out_statistics(logits: torch.Tensor, next_ids: torch.Tensor, totals: _Totals | None) -> _Totals:
    """Accumulate per-layer sums over one chunk; logits (slot, seq, vocab), next_ids (seq - 1,)."""
    logp = torch.log_softmax(logits.double(), -1)
    final = logp[-1]
    kl = kl_divergence(final, logp).sum(-1)  # (slot,)
    top1 = (logp.argmax(-1) == final.argmax(-1)).double().sum(-1)
    nll = -logp[:, :-1].gather(-1, next_ids.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1).sum(-1)
    if totals is None:
        return _Totals(kl, top1, nll)
    return _Totals(totals.kl + kl, totals.top1 + top1, totals.nll + nll)


def compare(
    model,
    translators: AffineLens,
    request: LensComparisonRequest,
    held_out: list[torch.Tensor],
    residuals: Callable[[torch.Tensor], torch.Tensor],
    prompt_ids: torch.Tensor,
    tokens: tuple[str, ...],
    target_id: int | None,
    progress: Callable[[float | None, str], None] = lambda f, m: None,
    lens_name: str = "tuned lens",
    on_partial: Callable[[LensComparisonResult], None] | None = None,
) -> LensComparisonResult:
    """Held-out statistics for the logit lens and ``translators`` over ``held_out`` chunks (token-id
    tensors), and the target trajectory on the prompt. ``residuals(ids) -> (slot, seq, d_model)``.

    The prompt's trajectory is cheap (one position) and comes first: ``on_partial``, if given, receives
    a result with it and no held-out tokens yet (statistics NaN, ``eval_tokens`` 0), then one after
    every held-out chunk with the statistics so far."""
    with torch.no_grad():
        resid = residuals(prompt_ids)[:, -1:]  # (slot, 1, d_model)
        logit_last = torch.softmax(decode(model, resid)[:, 0].double(), -1)
        tuned_last = torch.softmax(lens_logits(model, translators, resid)[:, 0].double(), -1)
    n_slots = logit_last.shape[0]
    has_target = target_id is not None
    nan = torch.full((n_slots,), float("nan"), dtype=torch.float64)
    empty = _Totals(nan, nan, nan)

    def result(logit_totals: _Totals, tuned_totals: _Totals, n_tokens: int, n_next: int) -> LensComparisonResult:
        tokens_seen, next_seen = max(n_tokens, 1), max(n_next, 1)
        return LensComparisonResult(
            model_name=model.name,
            layer_labels=slot_labels(n_slots - 1),
            lens_name=lens_name,
            lens_step=getattr(request, "lens_step", 0),
            eval_tokens=n_tokens,
            kl_logit=(logit_totals.kl / tokens_seen).float().numpy(),
            kl_tuned=(tuned_totals.kl / tokens_seen).float().numpy(),
            top1_logit=(logit_totals.top1 / tokens_seen).float().numpy(),
            top1_tuned=(tuned_totals.top1 / tokens_seen).float().numpy(),
            ppl_logit=torch.exp(logit_totals.nll / next_seen).float().numpy(),
            ppl_tuned=torch.exp(tuned_totals.nll / next_seen).float().numpy(),
            tokens=np.array(tokens),
            target_token=request.target if has_target else "",
            prob_logit=logit_last[:, target_id].float().numpy() if has_target else np.zeros(0, np.float32),
            prob_tuned=tuned_last[:, target_id].float().numpy() if has_target else np.zeros(0, np.float32),
            top_logit=np.array(prompts.token_strings(model, logit_last.argmax(-1))),
            top_tuned=np.array(prompts.token_strings(model, tuned_last.argmax(-1))),
        )

    if on_partial is not None:
        on_partial(result(empty, empty, 0, 0))
    logit_totals = tuned_totals = None
    n_tokens = n_next = 0
    with torch.no_grad():
        for i, ids in enumerate(held_out):
            progress(i / len(held_out), f"Held-out chunk {i + 1} of {len(held_out)}")
            resid = residuals(ids)
            logit_totals = held_out_statistics(decode(model, resid), ids[1:], logit_totals)
            tuned_totals = held_out_statistics(lens_logits(model, translators, resid), ids[1:], tuned_totals)
            n_tokens, n_next = n_tokens + len(ids), n_next + len(ids) - 1
            if on_partial is not None and i + 1 < len(held_out):
                on_partial(result(logit_totals, tuned_totals, n_tokens, n_next))
    return result(logit_totals or empty, tuned_totals or empty, n_tokens, n_next)


def corpus_chunks(model, name: str, split: str, chunk_tokens: int, limit: int | None = None) -> list[torch.Tensor]:
    """Token-id chunks of a bundled corpus split, each after the tokenizer's own prefix (<bos> or nothing)."""
    bos = model.tokenizer("").input_ids
    return [torch.tensor(bos + c) for c in corpus.chunks(model.tokenizer, name, split, chunk_tokens, limit)]


def check(request: LensComparisonRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: LensComparisonRequest, progress, lens: AffineLens | None = None) -> LensComparisonResult:
    """Logit vs tuned lens on held-out text and on the prompt, with ``lens`` (default: the trainer's
    current translators, which must be at ``request.lens_step``)."""
    model, config = ctx.model, request.config
    encoded = ctx.encode(request.prompt)
    target_id = prompts.single_token_id(model, request.target) if request.target else None
    if lens is None:
        lens, step = ctx.trainer(config, progress).snapshot()
        if step != request.lens_step:
            raise BadRequest(f"This tuned lens is at step {step} now, not {request.lens_step}: compare it again.")
    held_out = corpus_chunks(model, config.corpus, "heldout", config.chunk_tokens, request.eval_chunks)
    return compare(model, lens, request, held_out, residuals=lambda ids: tracing.residual_stream(model, ids).resid,
                   prompt_ids=encoded.ids, tokens=encoded.tokens, target_id=target_id, progress=progress,
                   on_partial=ctx.partial)


def with_lens(lens: AffineLens) -> Analysis:
    """The analysis comparing this very lens (a snapshot taken with its step), same cache key."""
    return dataclasses.replace(ANALYSIS, run=partial(run, lens=lens))


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Tuned lens vs logit lens", Request=LensComparisonRequest,
    Result=LensComparisonResult, run=run, check=check,
)
