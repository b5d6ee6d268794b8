"""Faithfulness scoreboard: how well AtP and RelP reproduce activation patching over many pairs.

Jafari et al. (2025), "RelP: Faithful and Efficient Circuit Discovery via Relevance Patching",
IOI evaluation. For each component type (residual stream, attention output, MLP output, attention
heads) the scores of every (pair, layer, position) — or (pair, layer, head) — are pooled and
compared with the activation-patching scores: Pearson r, Spearman rho, and top-k overlap (the
share of the estimate's k largest |scores| that are among the k largest |activation patching|
effects, near-ties within 5 % counted). Paper reference (IOI, GPT-2 small, AtP -> RelP, Pearson): residual 0.753 ->
0.968, attention out 0.979 -> 0.962, MLP out 0.195 -> 0.992.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from workbench import prompt_pairs
from workbench.analyses import patching
from workbench.analyses.base import Analysis
from workbench.analyses.patching import COMPONENTS, PatchingRequest, PatchingResult
from workbench.errors import BadRequest

NAME = "patching_faithfulness"
VERSION = 3
ESTIMATORS = ("atp", "relp")
MAX_PAIRS = 200
PAPER_GPT2_SMALL_PEARSON = {"resid": (0.753, 0.968), "attn": (0.979, 0.962), "mlp": (0.195, 0.992)}


@dataclass(frozen=True)
class FaithfulnessRequest:
    n_pairs: int = 20
    seed: int = 0
    top_k: int = 10
    ln_rule: bool = True
    identity_rule: bool = True
    half_rule: bool = True
    ah_rule: bool = False
    heads: bool = True

    def __post_init__(self):
        if not 2 <= self.n_pairs <= MAX_PAIRS:
            raise BadRequest(f"n_pairs must be between 2 and {MAX_PAIRS}, got {self.n_pairs}.")
        if not 1 <= self.top_k <= 1000:
            raise BadRequest(f"top_k must be between 1 and 1000, got {self.top_k}.")


@dataclass(frozen=True, eq=False)
class FaithfulnessResult:
    model_name: str
    components: np.ndarray  # (component,) str
    estimators: np.ndarray  # (estimator,) str: "atp", "relp"
    pearson: np.ndarray  # (estimator, component) float64; NaN where undefined
    spearman: np.ndarray  # (estimator, component)
    topk_overlap: np.ndarray  # (estimator, component), in [0, 1]
    act_points: np.ndarray  # (point,) float32 pooled activation-patching scores, all components
    atp_points: np.ndarray  # (point,)
    relp_points: np.ndarray  # (point,)
    point_component: np.ndarray  # (point,) int64 index into components
    n_pairs: int
    top_k: int
    seconds_act: float  # summed over pairs
    seconds_atp: float
    seconds_relp: float

    def __post_init__(self):
        table = (len(self.estimators), len(self.components))
        for name in ("pearson", "spearman", "topk_overlap"):
            if getattr(self, name).shape != table:
                raise ValueError(f"FaithfulnessResult.{name} has shape {getattr(self, name).shape}, expected {table}")
        points = self.act_points.shape
        for name in ("atp_points", "relp_points", "point_component"):
            if getattr(self, name).shape != points:
                raise ValueError(f"FaithfulnessResult.{name} has shape {getattr(self, name).shape}, expected {points}")

    def points(self, estimator: str, component: str) -> tuple[np.ndarray, np.ndarray]:
        """(activation patching, estimate) for one component."""
        mask = self.point_component == list(self.components).index(component)
        return self.act_points[mask], getattr(self, f"{estimator}_points")[mask]



def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


TIE_TOLERANCE = 0.05


def topk_overlap(truth: np.ndarray, estimate: np.ndarray, k: int, tie_tolerance: float = TIE_TOLERANCE) -> float:
    """Share of the estimate's k largest-|.| entries that are among the truth's k largest |.|.

    Tie-aware: an entry counts when its |truth| is within ``tie_tolerance`` (relative) of the k-th
    largest |truth|. Activation patching gives many components nearly the same effect (m ~ 1 on
    the swapped name in every early layer of every pair), and an arbitrary order among those
    would make the overlap meaningless.
    """
    k = min(k, len(truth))
    if k == 0:
        return float("nan")
    magnitude = np.abs(truth)
    threshold = np.sort(magnitude)[-k] * (1.0 - tie_tolerance)
    top_estimate = np.argsort(-np.abs(estimate), kind="stable")[:k]
    return float((magnitude[top_estimate] >= threshold).sum() / k)


def compute(model_name: str, results: Sequence[PatchingResult], request: FaithfulnessRequest) -> FaithfulnessResult:
    components = [c for c in COMPONENTS if all(r.scores("act", c).size for r in results)]
    act, atp, relp, which = [], [], [], []
    for index, component in enumerate(components):
        for result in results:
            size = result.scores("act", component).size
            act.append(result.scores("act", component).ravel())
            atp.append(result.scores("atp", component).ravel())
            relp.append(result.scores("relp", component).ravel())
            which.append(np.full(size, index, np.int64))
    act_points = np.concatenate(act).astype(np.float32)
    estimates = {"atp": np.concatenate(atp).astype(np.float32), "relp": np.concatenate(relp).astype(np.float32)}
    point_component = np.concatenate(which)
    table = {name: np.full((len(ESTIMATORS), len(components)), np.nan) for name in ("pearson", "spearman", "topk")}
    for e, estimator in enumerate(ESTIMATORS):
        for c in range(len(components)):
            mask = point_component == c
            truth, estimate = act_points[mask], estimates[estimator][mask]
            table["pearson"][e, c] = pearson(truth, estimate)
            table["spearman"][e, c] = spearman(truth, estimate)
            table["topk"][e, c] = topk_overlap(truth, estimate, request.top_k)
    return FaithfulnessResult(
        model_name=model_name,
        components=np.array(components),
        estimators=np.array(ESTIMATORS),
        pearson=table["pearson"],
        spearman=table["spearman"],
        topk_overlap=table["topk"],
        act_points=act_points,
        atp_points=estimates["atp"],
        relp_points=estimates["relp"],
        point_component=point_component,
        n_pairs=len(results),
        top_k=request.top_k,
        seconds_act=float(sum(r.seconds_act for r in results)),
        seconds_atp=float(sum(r.seconds_atp for r in results)),
        seconds_relp=float(sum(r.seconds_relp for r in results)),
    )


def ioi_pairs(ctx, n_pairs: int, seed: int = 0) -> list[prompt_pairs.PromptPair]:
    """IOI clean/corrupted pairs whose names are single tokens for ctx's model."""
    return prompt_pairs.ioi_pairs(ctx.model, n_pairs, seed, ctx.settings)


def run(ctx, request: FaithfulnessRequest, progress) -> FaithfulnessResult:
    """AtP and RelP vs activation patching over IOI pairs (each pair cached on its own); after each
    pair from the second on, the scoreboard of the pairs so far is reported as a partial result."""
    pairs = ioi_pairs(ctx, request.n_pairs, request.seed)
    results = []
    for index, pair in enumerate(pairs):
        def pair_progress(fraction, message, index=index):
            overall = None if fraction is None else (index + fraction) / len(pairs)
            progress(overall, f"Pair {index + 1} of {len(pairs)}: {message}")

        pair_request = PatchingRequest(
            pair.clean, pair.corrupted, pair.answer, pair.wrong, ln_rule=request.ln_rule,
            identity_rule=request.identity_rule, half_rule=request.half_rule, ah_rule=request.ah_rule,
            heads=request.heads,
        )
        results.append(ctx.run(patching.ANALYSIS, pair_request, pair_progress))
        if 2 <= len(results) < len(pairs):  # the scoreboard so far: it updates pair by pair
            ctx.partial(compute(ctx.name, results, request))
    return compute(ctx.name, results, request)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Patching faithfulness scoreboard", Request=FaithfulnessRequest,
    Result=FaithfulnessResult, run=run,
)
