"""Activation patching vs attribution patching (AtP) vs relevance patching (RelP), one prompt pair.

Jafari et al. (2025), "RelP: Faithful and Efficient Circuit Discovery via Relevance Patching";
attribution patching after Nanda (2023) / Kramár et al. (2024), "AtP*"; IOI after Wang et al.
(2023), "Interpretability in the Wild".

Metric (``shared/METHODS.md``): ``m = (LD - LD_corr) / (LD_clean - LD_corr)`` with
``LD = logit(answer) - logit(wrong)`` at the last position, so ``m`` is 0 on the corrupted run
and 1 on the clean run. Every score is in units of ``m``:

* activation patching (ground truth, ``analyses.activation_patching``, cached on its own): run
  the corrupted prompt with the clean activation of one site written in, record ``m``. Sites:
  residual stream (block input), attention output and MLP output per (block, position), and per
  attention head (all positions of one head);
* AtP: ``sum_d  dm/da(corr)[d] * (a_clean - a_corr)[d]`` (two forwards, one backward);
* RelP: the same sum with ``dm/da`` taken under LRP rules (LN, identity, half, optional AH).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from workbench import interventions, prompts
from workbench.analyses import activation_patching
from workbench.analyses.activation_patching import (  # noqa: F401 (the ground truth's names, used from here too)
    ActivationPatchingRequest,
    ActivationPatchingResult,
    check_pair_fields,
    compute_activation,
    logit_diff,
    metric_fn,
)
from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary, slot_depth
from workbench.interventions import HEADS, SITES, Rules
from workbench.models.loader import LoadedModel

NAME = "patching"
VERSION = 3  # 3: byte tokens shown as <0x..>
COMPONENTS = activation_patching.COMPONENTS  # resid, attn, mlp: (block, seq); heads: (block, head)
METHODS = ("act", "atp", "relp")


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
        check_pair_fields(self)

    @property
    def activation_request(self) -> ActivationPatchingRequest:
        return ActivationPatchingRequest(self.clean, self.corrupted, self.answer, self.wrong, self.heads)

    @property
    def rules(self) -> Rules:
        return Rules(ln=self.ln_rule, identity=self.identity_rule, half=self.half_rule, attention=self.ah_rule)


@dataclass(frozen=True, eq=False)
class PatchingResult:
    model_name: str
    clean_tokens: np.ndarray  # (seq,) str
    corrupted_tokens: np.ndarray  # (seq,) str
    ld_clean: float
    ld_corrupted: float
    act_resid: np.ndarray  # (block, seq) float32, metric m after patching
    act_attn: np.ndarray  # (block, seq)
    act_mlp: np.ndarray  # (block, seq)
    act_heads: np.ndarray  # (block, head); (0, 0) when heads were not asked for
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



@dataclass(frozen=True)
class Attribution:
    """AtP and RelP scores of one pair, computed before (and without) activation patching."""

    ld_clean: float
    ld_corrupted: float
    atp: dict  # component -> (block, seq) or (block, head) float32
    relp: dict
    seconds_atp: float  # wall time, the two shared recording forwards included in each
    seconds_relp: float


def attribute(model: LoadedModel, clean_ids: torch.Tensor, corrupted_ids: torch.Tensor, answer_id: int,
              wrong_id: int, request: PatchingRequest) -> Attribution:
    """AtP and RelP on one pair: two recording forwards, then one gradient pass per method."""
    sites = (*SITES, HEADS) if request.heads else SITES
    start = time.perf_counter()
    clean_acts, clean_logits = interventions.record(model, clean_ids, sites)
    _, corrupted_logits = interventions.record(model, corrupted_ids, ())
    shared = time.perf_counter() - start  # the two forwards both estimates need
    ld_clean = logit_diff(clean_logits, answer_id, wrong_id)
    ld_corrupted = logit_diff(corrupted_logits, answer_id, wrong_id)
    activation_patching._check_gap(ld_clean, ld_corrupted, request.answer, request.wrong)
    metric = metric_fn(answer_id, wrong_id, ld_corrupted, ld_clean)
    start = time.perf_counter()
    atp = _attribution(model, corrupted_ids, metric, sites, clean_acts, Rules())
    seconds_atp = shared + time.perf_counter() - start
    start = time.perf_counter()
    relp = _attribution(model, corrupted_ids, metric, sites, clean_acts, request.rules)
    seconds_relp = shared + time.perf_counter() - start
    return Attribution(ld_clean, ld_corrupted, atp, relp, seconds_atp, seconds_relp)


def combine(model: LoadedModel, clean_ids: torch.Tensor, corrupted_ids: torch.Tensor, attribution: Attribution,
            activation: ActivationPatchingResult) -> PatchingResult:
    """The three methods side by side (``activation`` may be partial: cells not run yet are NaN)."""
    if abs(attribution.ld_corrupted - activation.ld_corrupted) > 1e-3 * max(1.0, abs(attribution.ld_corrupted)):
        raise ValueError("the cached activation patching belongs to another corrupted run")
    empty = np.zeros((0, 0), np.float32)
    methods = (("atp", attribution.atp), ("relp", attribution.relp))
    return PatchingResult(
        model_name=model.name,
        clean_tokens=np.array(prompts.token_strings(model, clean_ids)),
        corrupted_tokens=np.array(prompts.token_strings(model, corrupted_ids)),
        ld_clean=activation.ld_clean,
        ld_corrupted=activation.ld_corrupted,
        **{f"act_{c}": activation.scores(c) for c in COMPONENTS},
        **{f"{name}_{c}": scores.get(c, empty) for name, scores in methods for c in COMPONENTS},
        seconds_act=activation.seconds,
        seconds_atp=attribution.seconds_atp,
        seconds_relp=attribution.seconds_relp,
    )


def pending_activation(model: LoadedModel, seq: int, attribution: Attribution, heads: bool) -> ActivationPatchingResult:
    """Activation patching before any cell has run: every cell NaN (drawn as a gap)."""
    grid = np.full((model.info.n_layers, seq), np.nan, np.float32)
    head_grid = np.full((model.info.n_layers, model.info.n_heads), np.nan, np.float32) if heads else \
        np.zeros((0, 0), np.float32)
    return ActivationPatchingResult(grid, grid.copy(), grid.copy(), head_grid, attribution.ld_clean,
                                    attribution.ld_corrupted, 0.0)


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
    return combine(model, clean_ids, corrupted_ids,
                   attribute(model, clean_ids, corrupted_ids, answer_id, wrong_id, request), activation)


def _attribution(model, corrupted_ids, metric, sites, clean_acts, rules: Rules) -> dict[str, np.ndarray]:
    """``sum_d grad * (clean - corrupted)`` per (block, position), or per (block, head)."""
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


def check(request: PatchingRequest, settings) -> None:
    activation_patching.check(request.activation_request, settings)


def run(ctx, request: PatchingRequest, progress) -> PatchingResult:
    """Activation patching, AtP and RelP on one clean/corrupted pair (Jafari et al. 2025). AtP and
    RelP come first (a partial result with activation patching still NaN), then activation patching
    fills in as it runs (each of its partial results reported too)."""
    model = ctx.model
    clean_ids, corrupted_ids, answer_id, wrong_id = activation_patching.encode(ctx, request)
    progress(None, "AtP and RelP: two forward and two backward passes")
    attribution = attribute(model, clean_ids, corrupted_ids, answer_id, wrong_id, request)
    ctx.partial(combine(model, clean_ids, corrupted_ids, attribution,
                        pending_activation(model, len(corrupted_ids), attribution, request.heads)))
    activation = ctx.run(activation_patching.ANALYSIS, request.activation_request, progress, on_partial=lambda part:
                         ctx.partial(combine(model, clean_ids, corrupted_ids, attribution, part)))
    return combine(model, clean_ids, corrupted_ids, attribution, activation)


def summary(result: PatchingResult) -> list[LayerSummary]:
    """Largest activation-patching effect on m over positions, per block and site."""
    resid = np.abs(result.act_resid).max(axis=1).astype(np.float64)  # block l's input = residual slot l
    name = result.model_name
    return [
        LayerSummary(name, NAME, "patching max |effect| on m: residual stream",
                     slot_depth(len(resid))[:-1], resid, tuple(str(i) for i in range(len(resid)))),
        LayerSummary.per_block(name, NAME, "patching max |effect| on m: attention output",
                               np.abs(result.act_attn).max(1)),
        LayerSummary.per_block(name, NAME, "patching max |effect| on m: MLP output", np.abs(result.act_mlp).max(1)),
    ]


IOI_PAIR = ("When Mary and John went to the store, John gave a drink to",
            "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")

ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Activation / attribution / relevance patching", Request=PatchingRequest,
    Result=PatchingResult, run=run, check=check, summary=summary,
    compare_request=lambda inputs: PatchingRequest(*IOI_PAIR, heads=False), compare_figure="resid",
    compare_note="an IOI pair, slow on CPU",
)
