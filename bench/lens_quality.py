"""Lens quality on held-out text (issue #17): every lens of a bundled model, per layer, by one measure set.

Run with ``PYTHONPATH=. .venv/bin/python -m bench.lens_quality [--model NAME] [--out FILE.md]``
(one torch thread; it uses the configured cache, so the fitted lenses are stored and reused: the first
run fits the Jacobian lens, which takes minutes). It calls ``Workbench.lens_comparison`` with the logit
lens, the linear shortcut (Din et al. 2023), the Jacobian lens (anthropics/jacobian-lens) and the
Patchscope (Ghandeharioun et al. 2024, prompt only: it has no held-out row), and prints:

* per lens, held-out KL(final || lens) in nats, top-1 agreement with the final prediction and the
  perplexity of the true next token, at slots 0, L/4, L/2, 3L/4 and L-1 (slot L is the model's own
  output, equal for every lens), and the mean over slots < L;
* each lens's fitting cost (wall seconds and tokens, as stored with the lens);
* the KL gap (logit lens minus learned lens) averaged over the early, middle and late thirds of the
  slots below L, and whether the paper's qualitative finding holds there: the learned maps beat the
  logit lens most in the early and middle layers;
* the prompt's top-1 next token under each lens at the same slots (the Patchscope's only row).

The tuned lens is left out (it needs a training run of its own).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import printing_progress
from workbench.analyses.lens_comparison import LENS_TITLES, LensComparisonRequest
from workbench.service import Workbench

PROMPT = "In Python, the built-in function that returns the number of items in a list is called"
LEARNED = ("linear_shortcut", "jacobian")


def depth_slots(n_blocks: int) -> list[int]:
    """Slots 0, L/4, L/2, 3L/4 and L-1 (rounded down, without repeats)."""
    return sorted({0, n_blocks // 4, n_blocks // 2, (3 * n_blocks) // 4, n_blocks - 1})


def thirds(n_blocks: int, first: int = 0) -> dict[str, np.ndarray]:
    """The slots ``first`` .. L-1 split into early, middle and late thirds of the depth."""
    slots = np.arange(first, n_blocks)
    return {"early": slots[slots < n_blocks / 3], "middle": slots[(slots >= n_blocks / 3) & (slots < 2 * n_blocks / 3)],
            "late": slots[slots >= 2 * n_blocks / 3]}


def report(result, model_name: str, wall: float, cpu: float) -> str:
    n_blocks = len(result.layer_labels) - 1
    slots = depth_slots(n_blocks)
    names = [str(n) for n in result.lens_names]
    lines = [f"## {model_name}: lens quality on held-out text",
             "",
             f"{n_blocks} blocks; held-out: {result.eval_tokens} tokens of the python-reference held-out split; "
             f"run {wall:.0f} s wall, {cpu:.0f} s process CPU (one thread; includes any fit).",
             "Columns: slot (0 = embeddings, l = after block l-1 ... named by the block that wrote it); "
             "mean = over slots < L.", ""]
    head = "| lens | measure | " + " | ".join(f"slot {s} ({str(result.layer_labels[s])})" for s in slots) + \
        " | mean < L |"
    lines += [head, "|" + "---|" * (3 + len(slots))]
    for i, name in enumerate(names):
        if np.isnan(result.kl[i]).all():
            continue
        for measure, values, fmt in (("KL (nats)", result.kl[i], "{:.3f}"), ("top-1", result.top1[i], "{:.3f}"),
                                     ("ppl", result.ppl[i], "{:.1f}")):
            cells = [fmt.format(float(values[s])) for s in slots]
            mean = fmt.format(float(np.mean(values[:n_blocks])))
            lines.append(f"| {LENS_TITLES[name]} | {measure} | " + " | ".join(cells) + f" | {mean} |")
    lines.append(f"| (model) | ppl at slot L | {float(result.ppl[0][n_blocks]):.1f} |" + " |" * len(slots))
    lines += ["", "Fitting cost (stored with the lens; the logit lens and the Patchscope fit nothing):", "",
              "| lens | fit wall s | fit tokens | how |", "|---|---|---|---|"]
    for i, name in enumerate(names):
        lines.append(f"| {LENS_TITLES[name]} | {float(result.fit_seconds[i]):.1f} | {int(result.fit_tokens[i])} | "
                     f"{result.fit_note[i]} |")
    logit = names.index("logit")
    lines += ["", "KL gap, logit lens minus learned lens (nats; positive: the learned map is closer to the final "
              "distribution), mean over each third of the depth below L; in brackets, as a share of the logit lens's "
              "KL there. Slot 0 (the embeddings, where the logit lens is far off) is counted in the first rows and "
              "left out in the second:", "",
              "| lens | slots | early | middle | late | finding holds (gap early and middle > late) |",
              "|---|---|---|---|---|---|"]
    for first in (0, 1):
        bands = thirds(n_blocks, first)
        for name in LEARNED:
            if name not in names:
                continue
            i = names.index(name)
            gap = result.kl[logit] - result.kl[i]
            by = {band: float(np.mean(gap[s])) for band, s in bands.items()}
            share = {band: float(np.mean(gap[s]) / np.mean(result.kl[logit][s])) for band, s in bands.items()}
            holds = by["early"] > by["late"] and by["middle"] > by["late"]
            lines.append(f"| {LENS_TITLES[name]} | {first}..{n_blocks - 1} | " +
                         " | ".join(f"{by[b]:+.2f} ({share[b]:+.0%})" for b in bands) +
                         f" | {'yes' if holds else 'no'} (in nats) |")
    lines += ["", f"Prompt {PROMPT!r}: top-1 next token under each lens (probability):", "",
              "| lens | " + " | ".join(f"slot {s}" for s in slots) + f" | slot {n_blocks} |",
              "|" + "---|" * (2 + len(slots))]
    for i, name in enumerate(names):
        cells = [f"{str(result.top_tokens[i, s, 0])!r} {float(result.top_probs[i, s, 0]):.2f}"
                 for s in [*slots, n_blocks]]
        lines.append(f"| {LENS_TITLES[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_slot(result) -> str:
    """Every slot, every lens measured on held-out text: the full table behind the compact one."""
    names = [str(n) for n in result.lens_names]
    measured = [i for i in range(len(names)) if not np.isnan(result.kl[i]).all()]
    lines = ["| slot | " + " | ".join(f"KL {LENS_TITLES[names[i]]}" for i in measured) + " | " +
             " | ".join(f"top-1 {LENS_TITLES[names[i]]}" for i in measured) + " |",
             "|" + "---|" * (1 + 2 * len(measured))]
    for s, label in enumerate(result.layer_labels):
        lines.append(f"| {s} ({label}) | " + " | ".join(f"{float(result.kl[i, s]):.3f}" for i in measured) + " | " +
                     " | ".join(f"{float(result.top1[i, s]):.3f}" for i in measured) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--eval-chunks", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables (Markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("LAYERLENS_THREADS", "1")))
    wb = Workbench()
    progress = printing_progress()

    try:
        request = LensComparisonRequest(PROMPT, lenses=("logit", "linear_shortcut", "jacobian", "patchscope"),
                                        eval_chunks=args.eval_chunks)
        cpu, wall = time.process_time(), time.perf_counter()
        result = wb.lens_comparison(args.model, request, progress)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        wb.close()
    text = report(result, args.model, wall, cpu)
    full = f"\nEvery slot ({args.model}):\n\n" + per_slot(result)
    print(text + full)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + full)


if __name__ == "__main__":
    main()
