"""Benchmark: AtP and RelP vs full activation patching on one IOI pair of the default model.

Run with ``make bench`` (or ``.venv/bin/python -m bench.bench_patching``). Prints wall times
measured in this one run and their ratios:

* forward     plain HF forward pass of one prompt
* atp         attribution patching: clean + corrupted forward, one backward (all three sites)
* relp        the same under the LN + identity + half rules (all three sites)
* act <site>  activation patching of every (layer, position) of the site, one position per batch
              row, one batched forward per layer (no skipping of no-op positions)
"""

from __future__ import annotations

import argparse

from bench.common import median_seconds, throwaway_workbench
from workbench import interventions, prompt_pairs, tracing
from workbench.analyses import patching
from workbench.interventions import SITES, Rules

PAIR = prompt_pairs.ioi_pair("When {io} and {s} went to the store, {s} gave a drink to", "Mary", "John")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sites", default="resid", help="comma-separated sites to activation-patch in full")
    args = parser.parse_args()

    with throwaway_workbench() as wb:  # only loads the model; the store is not needed
        model = wb.model(args.model)
        pair = prompt_pairs.encode_pair(model, PAIR, wb.settings)

    def estimate(rules: Rules) -> None:
        clean_acts, clean_logits = interventions.record(model, pair.clean_ids, SITES)
        _, corrupted_logits = interventions.record(model, pair.corrupted_ids, ())
        metric = patching.metric_fn(
            pair.answer_id, pair.wrong_id,
            patching.logit_diff(corrupted_logits, pair.answer_id, pair.wrong_id),
            patching.logit_diff(clean_logits, pair.answer_id, pair.wrong_id),
        )
        patching._attribution(model, pair.corrupted_ids, metric, SITES, clean_acts, rules)

    def activation_patching(site: str) -> None:
        clean_acts, _ = interventions.record(model, pair.clean_ids, (site,))
        for layer in range(model.info.n_layers):
            interventions.patch_positions(model, pair.corrupted_ids, clean_acts[(site, layer)], layer, site)

    tracing.forward_logits(model, pair.clean_ids)  # warm-up
    estimate(Rules())
    forward = median_seconds(lambda: tracing.forward_logits(model, pair.clean_ids), args.repeats)
    atp = median_seconds(lambda: estimate(Rules()), args.repeats)
    relp = median_seconds(lambda: estimate(Rules(ln=True, identity=True, half=True)), args.repeats)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    act = {site: median_seconds(lambda site=site: activation_patching(site), 1) for site in sites}

    print(f"model {args.model}: {model.info.n_layers} layers, {len(pair.clean_ids)} tokens")
    print(f"{'step':<14}{'median ms':>12}{'x forward':>12}")
    rows = [("forward", forward), ("atp (3 sites)", atp), ("relp (3 sites)", relp)]
    rows += [(f"act {site}", seconds) for site, seconds in act.items()]
    for name, seconds in rows:
        print(f"{name:<14}{seconds * 1e3:>12.1f}{seconds / forward:>12.2f}")
    for site, seconds in act.items():
        print(f"RATIO activation_patching_{site} / atp = {seconds / atp:.1f}")
        print(f"RATIO activation_patching_{site} / relp = {seconds / relp:.1f}")
    print(f"RATIO relp / atp = {relp / atp:.2f}")


if __name__ == "__main__":
    main()
