"""Activation patching, the ground truth of the patching page: one prompt pair, every site.

Wang et al. (2023), "Interpretability in the Wild" (IOI); Meng et al. (2022), "Locating and
Editing Factual Associations in GPT"; metric of Jafari et al. (2025), "RelP" (``shared/METHODS.md``):
``m = (LD - LD_corr) / (LD_clean - LD_corr)`` with ``LD = logit(answer) - logit(wrong)`` at the last
position, so ``m`` is 0 on the corrupted run and 1 on the clean run. Run the corrupted prompt with
the clean activation of one site written in and record ``m``. Sites: residual stream (block
input), attention output and MLP output per (block, position), and per attention head (all
positions of one head).

By default the cells run through ``workbench.patching_runs`` (the corrupted run's prefix and
key/value cache reused, every cell of a block in one batched run); ``compute_activation(...,
fast=False)`` is the plain implementation it is tested against (equal to 1e-5 in ``m``, so
``VERSION`` and stored results are unchanged).

It does not depend on RelP's rules, so it is an analysis (and a cache entry) of its own:
toggling a rule on the patching page never re-runs it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workbench import interventions, patching_runs, prompt_pairs
from workbench.analyses.base import Analysis
from workbench.errors import BadPrompt, BadRequest
from workbench.interventions import HEADS, SITES
from workbench.models.loader import LoadedModel

NAME = "activation_patching"
VERSION = 1
COMPONENTS = (*SITES, HEADS)  # resid, attn, mlp: (block, seq); heads: (block, head)
MIN_LOGIT_DIFF_GAP = 1e-6


@dataclass(frozen=True)
class ActivationPatchingRequest:
    """The ground-truth part of a PatchingRequest (everything but the RelP rules)."""

    clean: str
    corrupted: str
    answer: str  # the clean prompt's answer token, e.g. " Mary"
    wrong: str  # the corrupted prompt's answer token, e.g. " John"
    heads: bool = True  # also patch each attention head

    def __post_init__(self):
        check_pair_fields(self)


def check_pair_fields(request) -> None:
    """The checks every request naming a clean/corrupted pair runs on itself."""
    for name in ("clean", "corrupted", "answer", "wrong"):
        if not isinstance(getattr(request, name), str):
            raise BadRequest(f"'{name}' must be text.")
    if request.answer == request.wrong:
        raise BadRequest("The answer and the wrong answer are the same token; pick two different ones.")
    if request.clean == request.corrupted:
        raise BadRequest("The clean and corrupted prompts are identical; change one name in the corrupted one.")


@dataclass(frozen=True, eq=False)
class ActivationPatchingResult:
    act_resid: np.ndarray  # (block, seq) float32, metric m after patching
    act_attn: np.ndarray  # (block, seq)
    act_mlp: np.ndarray  # (block, seq)
    act_heads: np.ndarray  # (block, head); (0, 0) without heads
    ld_clean: float
    ld_corrupted: float
    seconds: float  # wall time, both recording forwards included

    def __post_init__(self):
        for name in ("act_attn", "act_mlp"):
            if getattr(self, name).shape != self.act_resid.shape:
                raise ValueError(f"ActivationPatchingResult.{name} has shape {getattr(self, name).shape}, "
                                 f"expected {self.act_resid.shape}")
        if self.act_heads.size and self.act_heads.shape[0] != self.act_resid.shape[0]:
            raise ValueError("ActivationPatchingResult.act_heads has the wrong number of layers")

    def scores(self, component: str) -> np.ndarray:
        return getattr(self, f"act_{component}")


def metric_fn(answer_id: int, wrong_id: int, ld_corrupted: float, ld_clean: float) -> Callable:
    """Logits (..., vocab) -> m = (LD - LD_corr) / (LD_clean - LD_corr)."""
    denominator = ld_clean - ld_corrupted

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[..., answer_id] - logits[..., wrong_id] - ld_corrupted) / denominator

    return metric


def logit_diff(logits: torch.Tensor, answer_id: int, wrong_id: int) -> float:
    return float(logits[..., answer_id] - logits[..., wrong_id])


def _check_gap(ld_clean: float, ld_corrupted: float, answer: str, wrong: str) -> None:
    if abs(ld_clean - ld_corrupted) < MIN_LOGIT_DIFF_GAP:
        raise BadPrompt(
            f"The clean and corrupted prompts give the same logit difference ({ld_clean:.6g} vs "
            f"{ld_corrupted:.6g}) for {answer!r} vs {wrong!r}, so the patching metric is undefined. "
            "Change the corrupted prompt so that the answer changes."
        )


def compute_activation(
    model: LoadedModel,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    answer_id: int,
    wrong_id: int,
    request: ActivationPatchingRequest,
    progress: Callable[[float | None, str], None] = lambda f, m: None,
    fast: bool = True,
    partial: Callable[[ActivationPatchingResult], None] | None = None,
) -> ActivationPatchingResult:
    """Activation patching of every site. ``progress`` may raise to cancel (nothing is returned then);
    ``partial`` receives the result so far after every block, cells not run yet NaN.

    ``fast`` (the default) reuses the corrupted run's prefix and keys/values
    (``workbench.patching_runs``) where the model supports it; ``fast=False`` is the plain
    implementation (one full batched forward per site and block), the reference the fast path
    is tested against. Both give the same numbers up to float rounding.
    """
    sites = (*SITES, HEADS) if request.heads else SITES
    start = time.perf_counter()
    clean_acts, clean_logits = interventions.record(model, clean_ids, sites)
    use_fast = fast and patching_runs.supports(model)
    if use_fast:
        corrupted_run = patching_runs.record_corrupted(model, corrupted_ids, sites)
        corrupted_acts, corrupted_logits = corrupted_run.acts, corrupted_run.logits
    else:
        corrupted_acts, corrupted_logits = interventions.record(model, corrupted_ids, sites)
    ld_clean = logit_diff(clean_logits, answer_id, wrong_id)
    ld_corrupted = logit_diff(corrupted_logits, answer_id, wrong_id)
    _check_gap(ld_clean, ld_corrupted, request.answer, request.wrong)
    metric = metric_fn(answer_id, wrong_id, ld_corrupted, ld_clean)
    empty = np.zeros((0, 0), np.float32)

    def result(act: dict) -> ActivationPatchingResult:
        return ActivationPatchingResult(
            act_resid=act["resid"], act_attn=act["attn"], act_mlp=act["mlp"], act_heads=act.get(HEADS, empty),
            ld_clean=ld_clean, ld_corrupted=ld_corrupted, seconds=time.perf_counter() - start,
        )

    def report(scores: dict, pending: Callable[[str, int], bool]) -> None:
        """The partial result: a copy of the scores with every cell not run yet NaN."""
        if partial is None:
            return
        shown = {}
        for site, rows in scores.items():
            rows = np.array(rows, dtype=np.float32)
            for layer in range(rows.shape[0]):
                if pending(site, layer):
                    rows[layer] = np.nan
            shown[site] = rows
        partial(result(shown))

    act = None
    if use_fast:
        target = patching_runs.Target(answer_id, wrong_id, ld_clean, ld_corrupted)
        try:
            act = patching_runs.patch_all(
                model, corrupted_ids, clean_acts, corrupted_run, target, sites, progress,
                on_block=lambda scores, done: report(scores, lambda _site, layer: layer > done))
        except patching_runs.CacheMismatch as exc:
            warnings.warn(f"Fast activation patching fell back to the plain path: {exc}", stacklevel=2)
    if act is None:
        act = _activation_patching(model, corrupted_ids, clean_acts, corrupted_acts, metric, sites, progress, report)
    return result(act)


def _activation_patching(
    model, corrupted_ids, clean_acts, corrupted_acts, metric, sites, progress, report=None
) -> dict[str, np.ndarray]:
    """The plain implementation: patch each site's clean value into the corrupted run, one full
    batched forward per (site, block), one patched position (or head) per row. Positions where
    the clean and corrupted activations are identical (before the first differing token) are a
    no-op patch: their score is exactly 0 and they are not run."""
    n_layers = model.info.n_layers
    steps = [(site, layer) for site in sites for layer in range(n_layers)]
    scores = {site: [None] * n_layers for site in sites}
    for done, (site, layer) in enumerate(steps, start=1):
        source = clean_acts[(site, layer)]
        if site == HEADS:
            logits = interventions.patch_heads(model, corrupted_ids, source, layer)
            scores[site][layer] = metric(logits.double()).float().cpu().numpy()
        else:
            differs = (source != corrupted_acts[(site, layer)]).any(-1).nonzero().flatten().cpu()
            row = np.zeros(len(corrupted_ids), np.float32)
            if len(differs):
                logits = interventions.patch_positions(model, corrupted_ids, source, layer, site, positions=differs)
                row[differs.numpy()] = metric(logits.double()).float().cpu().numpy()
            scores[site][layer] = row
        progress(done / len(steps), f"Activation patching: {site} layer {layer} ({done}/{len(steps)})")
        if report is not None:
            width = {s: model.info.n_heads if s == HEADS else len(corrupted_ids) for s in sites}
            filled = {s: np.stack([r if r is not None else np.zeros(width[s], np.float32) for r in rows])
                      for s, rows in scores.items()}
            report(filled, lambda s, lay: scores[s][lay] is None)
    return {site: np.stack(rows) for site, rows in scores.items()}


def check(request: ActivationPatchingRequest, settings) -> None:
    from workbench import prompts

    prompts.check_text(request.clean, settings)
    prompts.check_text(request.corrupted, settings)


def encode(ctx, request) -> tuple:
    """(clean ids, corrupted ids, answer id, wrong id) of a request's pair on ctx's model."""
    pair = prompt_pairs.PromptPair(request.clean, request.corrupted, request.answer, request.wrong)
    encoded = prompt_pairs.encode_pair(ctx.model, pair, ctx.settings)
    return encoded.clean_ids, encoded.corrupted_ids, encoded.answer_id, encoded.wrong_id


def run(ctx, request: ActivationPatchingRequest, progress) -> ActivationPatchingResult:
    return compute_activation(ctx.model, *encode(ctx, request), request, progress, partial=ctx.partial)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Activation patching", Request=ActivationPatchingRequest,
    Result=ActivationPatchingResult, run=run, check=check,
)
