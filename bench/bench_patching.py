"""Benchmark: AtP and RelP vs full activation patching on one IOI pair of the default model.

Run with ``make bench`` (or ``.venv/bin/python -m bench.bench_patching``). Prints process CPU
times on one thread (``torch.set_num_threads(1)``, ``time.process_time``: the machine is shared,
so wall time would measure the neighbours too), measured in this one run, and their ratios:

* forward     plain HF forward pass of one prompt
* atp         attribution patching: clean + corrupted forward, one backward (all three sites)
* relp        the same under the LN + identity + half rules (all three sites)
* act <site>  activation patching of every (layer, position) of the site, one position per batch
              row, one batched forward per layer (no skipping of no-op positions)
* act plain   the full default activation patching request (resid, attn, mlp and heads), the plain
              implementation (``compute_activation(..., fast=False)``, one batched forward per
              site and block)
* act fast    the same request, the default fast implementation (``workbench.patching_runs``:
              reuses the corrupted run's prefix and keys/values); the two must agree to 1e-5 in m
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.common import interleaved_medians, throwaway_workbench
from workbench import interventions, prompt_pairs, tracing
from workbench.analyses import activation_patching, patching
from workbench.interventions import SITES, Rules

PAIR = prompt_pairs.ioi_pair("When {io} and {s} went to the store, {s} gave a drink to", "Mary", "John")


def cpu_medians(actions: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median process CPU seconds of each action, run in turn ``repeats`` times."""
    return interleaved_medians(actions, repeats, clock=time.process_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--act-repeats", type=int, default=1, help="runs of the full plain vs fast request")
    parser.add_argument("--sites", default="resid", help="comma-separated sites to activation-patch in full")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with throwaway_workbench() as wb:  # only loads the model; the store is not needed
        model = wb.model(args.model)
        pair = prompt_pairs.encode_pair(model, PAIR, wb.settings)
    request = activation_patching.ActivationPatchingRequest(PAIR.clean, PAIR.corrupted, PAIR.answer, PAIR.wrong)
    results = {}

    def estimate(rules: Rules) -> None:
        clean_acts, clean_logits = interventions.record(model, pair.clean_ids, SITES)
        _, corrupted_logits = interventions.record(model, pair.corrupted_ids, ())
        metric = patching.metric_fn(
            pair.answer_id, pair.wrong_id,
            patching.logit_diff(corrupted_logits, pair.answer_id, pair.wrong_id),
            patching.logit_diff(clean_logits, pair.answer_id, pair.wrong_id),
        )
        patching._attribution(model, pair.corrupted_ids, metric, SITES, clean_acts, rules)

    def activation_patching_site(site: str) -> None:
        clean_acts, _ = interventions.record(model, pair.clean_ids, (site,))
        for layer in range(model.info.n_layers):
            interventions.patch_positions(model, pair.corrupted_ids, clean_acts[(site, layer)], layer, site)

    def full_request(fast: bool) -> None:
        results[fast] = activation_patching.compute_activation(
            model, pair.clean_ids, pair.corrupted_ids, pair.answer_id, pair.wrong_id, request, fast=fast
        )

    tracing.forward_logits(model, pair.clean_ids)  # warm-up
    estimate(Rules())
    forward, atp, relp = cpu_medians(
        [
            lambda: tracing.forward_logits(model, pair.clean_ids),
            lambda: estimate(Rules()),
            lambda: estimate(Rules(ln=True, identity=True, half=True)),
        ],
        args.repeats,
    )
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    act = {site: cpu_medians([lambda site=site: activation_patching_site(site)], 1)[0] for site in sites}
    fast, plain = cpu_medians([lambda: full_request(True), lambda: full_request(False)], args.act_repeats)

    print(f"model {args.model}: {model.info.n_layers} layers, {len(pair.clean_ids)} tokens; "
          "process CPU time, 1 thread")
    print(f"{'step':<26}{'median ms':>12}{'x forward':>12}")
    rows = [("forward", forward), ("atp (3 sites)", atp), ("relp (3 sites)", relp)]
    rows += [(f"act {site}", seconds) for site, seconds in act.items()]
    rows += [("act plain (3 sites + heads)", plain), ("act fast (3 sites + heads)", fast)]
    for name, seconds in rows:
        print(f"{name:<26}{seconds * 1e3:>12.1f}{seconds / forward:>12.2f}")
    for site, seconds in act.items():
        print(f"RATIO activation_patching_{site} / atp = {seconds / atp:.1f}")
        print(f"RATIO activation_patching_{site} / relp = {seconds / relp:.1f}")
    print(f"RATIO relp / atp = {relp / atp:.2f}")
    print(f"RATIO activation_patching plain / fast = {plain / fast:.2f} (speed-up)")
    print(f"RATIO activation_patching_fast / forward = {fast / forward:.1f}")
    print(f"RATIO activation_patching_plain / forward = {plain / forward:.1f}")
    worst = max(
        float(np.abs(results[True].scores(c) - results[False].scores(c)).max()) for c in activation_patching.COMPONENTS
    )
    print(f"max |m fast - m plain| over all sites and heads = {worst:.2e}")


if __name__ == "__main__":
    main()
