"""Benchmark: concept-depth representation extraction throughput vs plain forward passes.

Run with ``.venv/bin/python -m bench.bench_concept_depth [--model M] [--texts N] [--batch B]``.
Prints examples per second, all measured in this one run (the steps interleaved, medians over
``--repeats``), on a mix of the three bundled tasks:

* forward batched      plain HF forward of padded batches (no nnsight), last-position logits only
* extract batched      nnsight trace saving every block's last-token state (tracing.last_token_states)
* forward unbatched    one plain forward per text
* extract unbatched    one trace per text
* extract cached       the same representations read back from the DuckDB store
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import forward_batch
from workbench import concept_datasets, tracing
from workbench.analyses.concept_depth import ConceptDepthRequest
from workbench.config import load_settings
from workbench.service import Workbench


def batches(sequences, size):
    return [sequences[i : i + size] for i in range(0, len(sequences), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts, labels = [], []
    for task in concept_datasets.TASKS:
        data = concept_datasets.builtin(task).subset(args.texts // len(concept_datasets.TASKS))
        texts += data.texts
        labels += data.labels
    settings = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        wb = Workbench(replace(settings, cache_dir=Path(tmp), models_dir_override=settings.models_dir))
        model = wb.model(args.model)
        sequences = sorted((model.tokenizer(t).input_ids for t in texts), key=len)
        steps = {
            "forward batched": lambda: [forward_batch(model, b) for b in batches(sequences, args.batch)],
            "extract batched": lambda: [tracing.last_token_states(model, b) for b in batches(sequences, args.batch)],
            "forward unbatched": lambda: [forward_batch(model, [s]) for s in sequences],
            "extract unbatched": lambda: [tracing.last_token_states(model, [s]) for s in sequences],
        }
        request = ConceptDepthRequest("mix", tuple(texts), tuple(labels))
        wb.concept_features(model, request, batch_size=args.batch)  # fill the store
        steps["extract cached"] = lambda: wb.concept_features(model, request)
        for step in steps.values():  # warm-up
            step()
        times = {name: [] for name in steps}
        for _ in range(args.repeats):  # interleaved: load from other processes hits every step alike
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        wb.close()

    seconds = {name: statistics.median(values) for name, values in times.items()}
    mean_len = sum(map(len, sequences)) / len(sequences)
    print(f"model {args.model}: {model.info.n_layers} layers, {len(sequences)} texts of {mean_len:.1f} tokens "
          f"on average, batch {args.batch}")
    print(f"{'step':<20}{'median s':>10}{'texts/s':>10}{'x forward batched':>20}")
    for name, value in seconds.items():
        print(f"{name:<20}{value:>10.2f}{len(sequences) / value:>10.1f}{value / seconds['forward batched']:>20.2f}")
    print(f"RATIO extract_batched / forward_batched = {seconds['extract batched'] / seconds['forward batched']:.2f}")
    print(f"RATIO extract_unbatched / extract_batched = "
          f"{seconds['extract unbatched'] / seconds['extract batched']:.2f}")


if __name__ == "__main__":
    main()
