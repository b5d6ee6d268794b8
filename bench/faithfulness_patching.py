"""Faithfulness table on a real model: AtP and RelP vs activation patching over IOI pairs.

Run with ``.venv/bin/python -m bench.faithfulness_patching --model smollm2-135m --pairs 20``.
Prints Pearson / Spearman / top-k overlap per component for AtP, RelP with the authors' default
rules (LN + identity + half) and RelP with the AH-rule added, next to the paper's GPT-2 small
Pearson numbers. The default-rule run goes through the service (cached in the store); the AH
variant reuses the same activation patching and only recomputes the relevance scores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from workbench import prompt_pairs
from workbench.analyses import patching
from workbench.analyses import patching_faithfulness as faithfulness
from workbench.analyses.patching_faithfulness import PAPER_GPT2_SMALL_PEARSON, FaithfulnessRequest
from workbench.config import load_settings
from workbench.interventions import HEADS, SITES, Rules
from workbench.service import Workbench


def with_ah_rule(model, result, pair, settings) -> patching.PatchingResult:
    """``result`` with its RelP scores recomputed under LN + identity + half + AH rules."""
    encoded = prompt_pairs.encode_pair(model, pair, settings)
    metric = patching.metric_fn(encoded.answer_id, encoded.wrong_id, result.ld_corrupted, result.ld_clean)
    sites = (*SITES, HEADS) if result.has_heads else SITES
    from workbench import interventions

    clean_acts, _ = interventions.record(model, encoded.clean_ids, sites)
    start = time.perf_counter()
    relp = patching._attribution(model, encoded.corrupted_ids, metric, sites, clean_acts, Rules(True, True, True, True))
    seconds = time.perf_counter() - start
    fields = {f: getattr(result, f) for f in result.__dataclass_fields__}
    fields.update({f"relp_{c}": relp[c] for c in relp})
    fields["seconds_relp"] = seconds
    return patching.PatchingResult(**fields)


def print_table(title: str, result: faithfulness.FaithfulnessResult) -> None:
    print(f"\n{title}: {result.n_pairs} pairs, top-k = {result.top_k}")
    print(f"{'component':<10}{'estimator':<10}{'pearson':>9}{'spearman':>10}{'top-k':>8}{'paper GPT-2 s.':>16}")
    for c, component in enumerate(result.components):
        for e, estimator in enumerate(result.estimators):
            paper = PAPER_GPT2_SMALL_PEARSON.get(str(component))
            ref = f"{paper[e]:.3f}" if paper else "-"
            print(
                f"{component:<10}{estimator:<10}{result.pearson[e, c]:>9.3f}{result.spearman[e, c]:>10.3f}"
                f"{result.topk_overlap[e, c]:>8.2f}{ref:>16}"
            )


def report(fraction: float | None, message: str) -> None:
    if " layer 0 (" in message:  # one line per component per pair
        print(f"  [{time.strftime('%H:%M:%S')} {fraction or 0:.2f}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--heads", action="store_true", help="also patch every attention head (slower)")
    args = parser.parse_args()

    wb = Workbench(load_settings())
    request = FaithfulnessRequest(n_pairs=args.pairs, seed=args.seed, top_k=args.top_k, heads=args.heads)
    start = time.perf_counter()
    result = wb.patching_faithfulness(args.model, request, report)
    print(f"total {time.perf_counter() - start:.0f} s")
    model = wb.model(args.model)
    print(f"model {args.model}: {model.info.n_layers} layers, {model.info.n_heads} heads")
    print(f"summed seconds: act {result.seconds_act:.1f}  atp {result.seconds_atp:.1f}  relp {result.seconds_relp:.1f}")
    print(f"RATIO act/atp = {result.seconds_act / result.seconds_atp:.1f}")
    print(f"RATIO act/relp = {result.seconds_act / result.seconds_relp:.1f}")
    print_table("AtP vs RelP (LN + identity + half)", result)

    pairs = wb.ioi_pairs(args.model, args.pairs, args.seed)
    per_pair = []
    for pair in pairs:
        pair_request = patching.PatchingRequest(pair.clean, pair.corrupted, pair.answer, pair.wrong, heads=args.heads)
        base = wb.patching(args.model, pair_request)
        per_pair.append(with_ah_rule(model, base, pair, wb.settings))
    ah = faithfulness.compute(args.model, per_pair, request)
    print_table("AtP vs RelP (LN + identity + half + AH)", ah)
    lds = np.array([[r.ld_clean, r.ld_corrupted] for r in per_pair])
    print(f"\nmean LD clean {lds[:, 0].mean():.3f}, mean LD corrupted {lds[:, 1].mean():.3f}")
    wb.close()


if __name__ == "__main__":
    main()
