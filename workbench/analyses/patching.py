"""Activation patching vs attribution patching (AtP) vs relevance patching (RelP), one prompt pair.

Jafari et al. (2025), "RelP: Faithful and Efficient Circuit Discovery via Relevance Patching";
attribution patching after Nanda (2023) / Kramár et al. (2024), "AtP*"; IOI after Wang et al.
(2023), "Interpretability in the Wild".

Metric (``shared/METHODS.md``): ``m = (LD - LD_corr) / (LD_clean - LD_corr)`` with
``LD = logit(answer) - logit(wrong)`` at the last position, so ``m`` is 0 on the corrupted run
and 1 on the clean run. Every score is in units of ``m``:

* activation patching (ground truth): run the corrupted prompt with the clean activation of
  one site written in, record ``m``. Sites: residual stream (block input), attention output and
  MLP output per (layer, position), and per attention head (all positions of one head);
* AtP: ``sum_d  dm/da(corr)[d] * (a_clean - a_corr)[d]`` (two forwards, one backward);
* RelP: the same sum with ``dm/da`` taken under LRP rules (LN, identity, half, optional AH).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from workbench import interventions, prompts
from workbench.errors import BadPrompt, BadRequest
from workbench.interventions import HEADS, SITES, Rules
from workbench.models.loader import LoadedModel

NAME = "patching"
VERSION = 2
COMPONENTS = (*SITES, HEADS)  # resid, attn, mlp: (layer, seq); heads: (layer, head)
METHODS = ("act", "atp", "relp")
MIN_LOGIT_DIFF_GAP = 1e-6


@dataclass(frozen=True)
class PatchingRequest:
    clean: str
    corrupted: str
    answer: str  # the clean prompt's answer token, e.g. " Mary"
    wrong: str  # the corrupted prompt's answer token, e.g. " John"
    ln_rule: bool = True
    identity_rule: bool = True
    half_rule: bool = True
    ah_rule: bool = False
    heads: bool = True  # also patch each attention head

    def __post_init__(self):
        for name in ("clean", "corrupted", "answer", "wrong"):
            if not isinstance(getattr(self, name), str):
                raise BadRequest(f"'{name}' must be text.")
        if self.answer == self.wrong:
            raise BadRequest("The answer and the wrong answer are the same token; pick two different ones.")
        if self.clean == self.corrupted:
            raise BadRequest("The clean and corrupted prompts are identical; change one name in the corrupted one.")

    @property
    def activation_request(self) -> ActivationPatchingRequest:
        return ActivationPatchingRequest(self.clean, self.corrupted, self.answer, self.wrong, self.heads)

    @property
    def rules(self) -> Rules:
        return Rules(ln=self.ln_rule, identity=self.identity_rule, half=self.half_rule, attention=self.ah_rule)


@dataclass(frozen=True)
class ActivationPatchingRequest:
    """The ground-truth part of a PatchingRequest: it does not depend on the RelP rules, so it is
    cached on its own and toggling a rule never re-runs activation patching."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    heads: bool = True


@dataclass(frozen=True, eq=False)
class ActivationPatchingResult:
    act_resid: np.ndarray  # (layer, seq) float32, metric m after patching
    act_attn: np.ndarray  # (layer, seq)
    act_mlp: np.ndarray  # (layer, seq)
    act_heads: np.ndarray  # (layer, head); (0, 0) without heads
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


# the cache entry of the ground truth: an analysis of its own in the store
ACTIVATION = SimpleNamespace(NAME="activation_patching", VERSION=1, RESULT_TYPE=ActivationPatchingResult)


@dataclass(frozen=True, eq=False)
class PatchingResult:
    model_name: str
    clean_tokens: np.ndarray  # (seq,) str
    corrupted_tokens: np.ndarray  # (seq,) str
    ld_clean: float
    ld_corrupted: float
    act_resid: np.ndarray  # (layer, seq) float32, metric m after patching
    act_attn: np.ndarray  # (layer, seq)
    act_mlp: np.ndarray  # (layer, seq)
    act_heads: np.ndarray  # (layer, head); (0, 0) when heads were not asked for
    atp_resid: np.ndarray
    atp_attn: np.ndarray
    atp_mlp: np.ndarray
    atp_heads: np.ndarray
    relp_resid: np.ndarray
    relp_attn: np.ndarray
    relp_mlp: np.ndarray
    relp_heads: np.ndarray
    seconds_act: float  # wall time of each method, for the page and the benchmark
    seconds_atp: float
    seconds_relp: float

    def __post_init__(self):
        seq = len(self.clean_tokens)
        n_layers = self.act_resid.shape[0]
        heads_shape = self.act_heads.shape
        if self.corrupted_tokens.shape != (seq,):
            raise ValueError("PatchingResult: clean and corrupted token counts differ")
        for method in METHODS:
            for component in COMPONENTS:
                expected = heads_shape if component == HEADS else (n_layers, seq)
                actual = self.scores(method, component).shape
                if actual != expected:
                    raise ValueError(f"PatchingResult.{method}_{component} has shape {actual}, expected {expected}")

    def scores(self, method: str, component: str) -> np.ndarray:
        return getattr(self, f"{method}_{component}")

    @property
    def has_heads(self) -> bool:
        return self.act_heads.size > 0


RESULT_TYPE = PatchingResult


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
) -> ActivationPatchingResult:
    """Activation patching of every site. ``progress`` may raise to cancel (nothing is returned then)."""
    sites = (*SITES, HEADS) if request.heads else SITES
    start = time.perf_counter()
    clean_acts, clean_logits = interventions.record(model, clean_ids, sites)
    corrupted_acts, corrupted_logits = interventions.record(model, corrupted_ids, sites)
    ld_clean = logit_diff(clean_logits, answer_id, wrong_id)
    ld_corrupted = logit_diff(corrupted_logits, answer_id, wrong_id)
    _check_gap(ld_clean, ld_corrupted, request.answer, request.wrong)
    metric = metric_fn(answer_id, wrong_id, ld_corrupted, ld_clean)
    act = _activation_patching(model, corrupted_ids, clean_acts, corrupted_acts, metric, sites, progress)
    empty = np.zeros((0, 0), np.float32)
    return ActivationPatchingResult(
        act_resid=act["resid"], act_attn=act["attn"], act_mlp=act["mlp"], act_heads=act.get(HEADS, empty),
        ld_clean=ld_clean, ld_corrupted=ld_corrupted, seconds=time.perf_counter() - start,
    )


def compute(
    model: LoadedModel,
    clean_ids: torch.Tensor,
    corrupted_ids: torch.Tensor,
    answer_id: int,
    wrong_id: int,
    request: PatchingRequest,
    activation: ActivationPatchingResult,
) -> PatchingResult:
    """AtP and RelP on one pair, next to its (separately cached) activation patching scores."""
    sites = (*SITES, HEADS) if request.heads else SITES
    start = time.perf_counter()
    clean_acts, _ = interventions.record(model, clean_ids, sites)
    _, corrupted_logits = interventions.record(model, corrupted_ids, ())
    shared = time.perf_counter() - start  # the two forwards both estimates need
    ld_corrupted = logit_diff(corrupted_logits, answer_id, wrong_id)
    metric = metric_fn(answer_id, wrong_id, activation.ld_corrupted, activation.ld_clean)
    start = time.perf_counter()
    atp = _attribution(model, corrupted_ids, metric, sites, clean_acts, Rules())
    seconds_atp = shared + time.perf_counter() - start
    start = time.perf_counter()
    relp = _attribution(model, corrupted_ids, metric, sites, clean_acts, request.rules)
    seconds_relp = shared + time.perf_counter() - start
    empty = np.zeros((0, 0), np.float32)
    if abs(ld_corrupted - activation.ld_corrupted) > 1e-3 * max(1.0, abs(ld_corrupted)):
        raise ValueError("the cached activation patching belongs to another corrupted run")
    return PatchingResult(
        model_name=model.name,
        clean_tokens=np.array(prompts.token_strings(model, clean_ids)),
        corrupted_tokens=np.array(prompts.token_strings(model, corrupted_ids)),
        ld_clean=activation.ld_clean,
        ld_corrupted=activation.ld_corrupted,
        **{f"act_{c}": activation.scores(c) for c in COMPONENTS},
        **{f"{name}_{c}": scores.get(c, empty) for name, scores in (("atp", atp), ("relp", relp)) for c in COMPONENTS},
        seconds_act=activation.seconds,
        seconds_atp=seconds_atp,
        seconds_relp=seconds_relp,
    )


def _attribution(model, corrupted_ids, metric, sites, clean_acts, rules: Rules) -> dict[str, np.ndarray]:
    """``sum_d grad * (clean - corrupted)`` per (layer, position), or per (layer, head)."""
    grad_pass = interventions.gradient_pass(model, corrupted_ids, metric, sites, rules)
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    scores = {}
    for site in sites:
        rows = []
        for layer in range(n_layers):
            key = (site, layer)
            delta = clean_acts[key].double() - grad_pass.values[key].double()
            product = grad_pass.grads[key].double() * delta
            if site == HEADS:
                rows.append(product.reshape(product.shape[0], n_heads, -1).sum((0, 2)))
            else:
                rows.append(product.sum(-1))
        scores[site] = torch.stack(rows).float().cpu().numpy()
    return scores


def _activation_patching(
    model, corrupted_ids, clean_acts, corrupted_acts, metric, sites, progress
) -> dict[str, np.ndarray]:
    """Patch each site's clean value into the corrupted run. Positions where the clean and
    corrupted activations are identical (before the first differing token) are a no-op patch:
    their score is exactly 0 and they are not run."""
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
    return {site: np.stack(rows) for site, rows in scores.items()}
