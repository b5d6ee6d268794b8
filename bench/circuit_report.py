"""Circuit report (issue #18): faithfulness curves of EAP, RelP and EAP-IG circuits, and the IOI heads.

Run with ``PYTHONPATH=. .venv/bin/python -m bench.circuit_report [--model NAME] [--out FILE.md]``
(one torch thread; it uses the configured cache, so a finished circuit run is stored and reused). For
each task (``ioi``, ``sva``; 20 pairs, seed 0) it calls ``Workbench.circuit`` with the three methods
(IG with 5 steps, default circuit sizes, ablated edges carry the corrupted activation) and prints each
method's faithfulness curve (M at each circuit size, in edges), its normalised area over log size, the
smallest tested circuit recovering 80 % of M, and the attribution and curve wall seconds.

For IOI it then lists the top-15 heads by |node score| (RelP and EAP-IG) and measures, on the 20 clean
prompts, what each head attends to, to compare it with the heads Wang et al. (2023, "Interpretability in
the Wild") report for GPT-2 small:

* ``end->IO`` / ``end->S1`` / ``end->S2``: attention from the last token to the indirect-object name and
  to the first and second subject name (name movers copy the IO name: high end->IO; S-inhibition heads
  attend from the end to S2);
* ``S2->S1``: attention from the second subject token to the first (duplicate-token heads);
* ``S2->S1+1``: attention from S2 to the token after S1 (induction heads).

The labels are a heuristic on those means (threshold 0.3, stated in ``classify``), not a causal claim:
the literature's classes are defined by path patching, which this report does not do. A head that
attends like a name mover but has a negative node score is labelled as a negative name mover.
Attention comes from ``tracing.attention_and_states`` (what ``Workbench.head_attention`` returns,
checked equal for one head), one pass per prompt for every head at once.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import printing_progress
from workbench import prompts, tracing
from workbench.analyses.circuit import METHOD_TITLES, CircuitRequest
from workbench.service import Workbench

TASKS = ("ioi", "sva")
TOP = 15
THRESHOLD = 0.3


def curve_tables(result, seconds: float) -> str:
    graph = result.graph
    methods = [str(m) for m in result.methods]
    lines = [f"### {result.model_name}, task {result.task}: {len(result.clean)} pairs, {len(graph.edges)} edges, "
             f"{len(graph.writers)} writer nodes",
             "",
             f"Clean logit difference (answer - wrong) mean {float(np.mean(result.ld_clean)):+.2f}, corrupted "
             f"{float(np.mean(result.ld_corrupted)):+.2f}; clean prompts preferring the answer: "
             f"{int(np.sum(result.ld_clean > 0))}/{len(result.clean)}. {result.rules}. Run {seconds:.0f} s wall.",
             "",
             "| method | area (log size) | 80% circuit (edges) | attribution s | curve s |", "|---|---|---|---|---|"]
    for i, m in enumerate(methods):
        rec = int(result.recovering[i])
        lines.append(f"| {METHOD_TITLES[m]} | {float(result.areas[i]):.3f} | {'none' if rec < 0 else rec} | "
                     f"{float(result.attribution_seconds[i]):.1f} | {float(result.curve_seconds[i]):.1f} |")
    lines += ["", "Faithfulness curve, M of the top-n circuit (n edges; every other edge ablated):", "",
              "| n | " + " | ".join(methods) + " |", "|" + "---|" * (1 + len(methods))]
    for j, size in enumerate(result.sizes):
        lines.append(f"| {int(size)} | " + " | ".join(f"{float(result.curves[i, j]):.3f}" for i in range(len(methods)))
                     + " |")
    return "\n".join(lines) + "\n"


def positions(ids: torch.Tensor, token_id: int) -> list[int]:
    return [int(i) for i in torch.nonzero(ids == token_id).flatten()]


def ioi_attention(wb: Workbench, model_name: str, result) -> dict[str, np.ndarray]:
    """(layer, head) mean attention over the clean IOI prompts: end->IO, end->S1, end->S2, S2->S1, S2->S1+1."""
    model = wb.model(model_name)
    sums: dict[str, np.ndarray] = {}
    n = 0
    for p, (clean, answer, wrong) in enumerate(zip(result.clean, result.answers, result.wrongs, strict=True)):
        encoded = prompts.encode(model, str(clean), wb.settings)
        ids = encoded.ids
        io = positions(ids, prompts.single_token_id(model, str(answer)))
        s = positions(ids, prompts.single_token_id(model, str(wrong)))
        if len(io) != 1 or len(s) != 2:
            print(f"  skipped pair {p}: IO at {io}, S at {s}")
            continue
        attn = tracing.attention_and_states(model, ids).attn.double().numpy()  # (layer, head, q, k)
        if p == 0:  # the service's view of one head is the same array
            _, one = wb.head_attention(model_name, str(clean), 0, 0)
            assert np.allclose(one, attn[0, 0], atol=1e-6)
        end, (s1, s2) = len(ids) - 1, s
        found = {"end->IO": attn[:, :, end, io[0]], "end->S1": attn[:, :, end, s1], "end->S2": attn[:, :, end, s2],
                 "S2->S1": attn[:, :, s2, s1], "S2->S1+1": attn[:, :, s2, s1 + 1]}
        for key, value in found.items():
            sums[key] = sums.get(key, 0) + value
        n += 1
    return {key: value / n for key, value in sums.items()}


def classify(stats: dict[str, np.ndarray], layer: int, head: int, score: float) -> str:
    """Heuristic labels from mean attention (threshold THRESHOLD), in the literature's terms."""
    a = {key: float(value[layer, head]) for key, value in stats.items()}
    labels = []
    if a["end->IO"] >= THRESHOLD and a["end->IO"] > 2 * (a["end->S1"] + a["end->S2"]):
        labels.append("name-mover-like" if score > 0 else "negative name-mover-like")
    if a["end->S2"] >= THRESHOLD and a["end->S2"] > a["end->IO"]:
        labels.append("attends end->S2 (S-inhibition-like position)")
    if a["S2->S1"] >= THRESHOLD:
        labels.append("duplicate-token-like")
    if a["S2->S1+1"] >= THRESHOLD:
        labels.append("induction-like")
    return ", ".join(labels) or "none of these"


def head_tables(result, stats: dict[str, np.ndarray]) -> str:
    graph = result.graph
    methods = [str(m) for m in result.methods]
    heads = [i for i, node in enumerate(graph.writers) if node.kind == "head"]
    rank = {m: {h: r for r, h in enumerate(sorted(heads, key=lambda i, k=k: -abs(result.node_scores[k, i])))}
            for k, m in enumerate(methods)}
    keys = list(stats)
    lines = [f"### {result.model_name}, IOI: top-{TOP} heads by |node score|, with mean attention on the "
             f"{len(result.clean)} clean prompts", ""]
    for m in ("relp", "ig"):
        if m not in methods:
            continue
        k = methods.index(m)
        lines += [f"{METHOD_TITLES[m]}:", "",
                  "| # | head | score | rank atp/relp/ig | " + " | ".join(keys) + " | label |",
                  "|" + "---|" * (5 + len(keys))]
        for r, i in enumerate(sorted(heads, key=lambda i, k=k: -abs(result.node_scores[k, i]))[:TOP]):
            node = graph.writers[i]
            score = float(result.node_scores[k, i])
            ranks = "/".join(str(rank[x][i] + 1) for x in methods)
            cells = " | ".join(f"{float(stats[key][node.layer, node.head]):.2f}" for key in keys)
            lines.append(f"| {r + 1} | {node.name} | {score:+.3f} | {ranks} | {cells} | "
                         f"{classify(stats, node.layer, node.head, score)} |")
        lines.append("")
    # the other way round: the heads that attend most like the literature's classes, and where attribution ranks them
    lines += ["Heads of the whole model that attend most like each class, and their rank by |node score| "
              f"(atp/relp/ig, of {len(heads)} heads):", "",
              "| pattern | head | mean attention | rank | score relp |",
              "|---|---|---|---|---|"]
    relp = methods.index("relp") if "relp" in methods else 0
    for key in ("end->IO", "end->S2", "S2->S1", "S2->S1+1"):
        flat = np.argsort(-stats[key], axis=None)[:3]
        for f in flat:
            layer, head = np.unravel_index(f, stats[key].shape)
            i = next(j for j in heads if graph.writers[j].layer == layer and graph.writers[j].head == head)
            ranks = "/".join(str(rank[x][i] + 1) for x in methods)
            lines.append(f"| {key} | {graph.writers[i].name} | {float(stats[key][layer, head]):.2f} | {ranks} | "
                         f"{float(result.node_scores[relp, i]):+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="also append the tables (Markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("LAYERLENS_THREADS", "1")))
    wb = Workbench()
    def emit(text: str) -> None:
        print(text, flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(text + "\n")

    try:
        for task in args.tasks:
            start = time.perf_counter()
            result = wb.circuit(args.model, CircuitRequest(task, n_pairs=args.pairs), printing_progress())
            emit(curve_tables(result, time.perf_counter() - start))
            if task == "ioi":
                emit(head_tables(result, ioi_attention(wb, args.model, result)))
    finally:
        wb.close()


if __name__ == "__main__":
    main()
