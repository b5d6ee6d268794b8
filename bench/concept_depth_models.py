"""Measurement: concept-depth curves of the bundled tasks on real models, clean and with noise.

Run with ``.venv/bin/python -m bench.concept_depth_models [--models ...] [--noise 8] [--limit N]``.
Prints, per model and task, the test accuracy per block, the concept depth (block and l/L) and
its shift when ``--noise`` random tokens are prepended; ``--json`` writes everything to a file.
Results go through the Workbench (cached), so the page shows the same numbers afterwards.
"""

from __future__ import annotations

import argparse
import json
import time

from workbench import concept_datasets
from workbench.analyses.concept_depth import ConceptDepthRequest, depth_shift
from workbench.service import Workbench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--tasks", nargs="+", default=list(concept_datasets.TASKS))
    parser.add_argument("--site", default="mlp_input")
    parser.add_argument("--noise", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="balanced subset size per task")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    wb = Workbench()
    rows = []
    for model in args.models:
        for task in args.tasks:
            data = concept_datasets.builtin(task).subset(args.limit)
            results = {}
            for noise in sorted({0, args.noise}):
                start = time.perf_counter()
                request = ConceptDepthRequest(task, data.texts, data.labels, site=args.site, noise_tokens=noise)
                results[noise] = wb.concept_depth(model, request)
                seconds = time.perf_counter() - start
                r = results[noise]
                print(f"{model} {task} noise={noise} ({len(data.texts)} texts, {seconds:.0f} s): depth block "
                      f"{r.depth_layer} (l/L={r.depth:.2f}), best block {r.best_layer} acc {r.accuracy.max():.3f}, "
                      f"chance {r.chance:.2f}", flush=True)
                print("  acc " + " ".join(f"{a:.2f}" for a in r.accuracy), flush=True)
                print("  auc " + " ".join(f"{a:.2f}" for a in r.roc_auc), flush=True)
                rows.append({"model": model, "task": task, "noise": noise, "site": args.site,
                             "accuracy": r.accuracy.tolist(), "f1": r.f1.tolist(), "roc_auc": r.roc_auc.tolist(),
                             "depth_layer": r.depth_layer, "depth": r.depth, "best_layer": r.best_layer,
                             "chance": r.chance, "n_test": r.n_test, "seconds": seconds})
            if args.noise:
                blocks, normalised = depth_shift(results[0], results[args.noise])
                print(f"  shift with {args.noise} noise tokens: {blocks:+d} blocks ({normalised:+.2f} l/L)", flush=True)
    wb.close()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
