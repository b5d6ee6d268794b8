"""Benchmark: edge attribution (AtP, RelP, EAP-IG) over an IOI task vs activation patching of the nodes,
and the faithfulness curves of the three methods' circuits.

Run with ``.venv/bin/python -m bench.bench_circuits`` (SmolLM2, 20 IOI pairs by default). Prints process
CPU seconds on ``--threads`` threads (``time.process_time``: the machine is shared, so wall time would
measure the neighbours too), each measured once in this run:

* atp / relp / ig       ``edge_attribution.attribute_edges`` (clean and corrupted split runs, then one
                        backward, or ``--steps`` backwards for IG): every edge and node score at once
* act nodes             activation patching of every node the edges start from (embeddings, each head,
                        each MLP), one run per node (heads of a block batched as rows), all pairs per
                        run, plain hooks on the unsplit model: M of the corrupted run with the node's
                        clean output patched in
* curve <method>        ``circuit_runs.faithfulness_curve`` at ``--sizes`` (real ablation runs, batched)

Then the numbers: each curve's M values, its area (over log size and over the fraction of edges), the
smallest circuit recovering 80% of M, the correlation of node scores with activation patching, and the
top-20 heads by node score.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch

from bench.common import cpu, throwaway_workbench
from workbench import circuit_runs as cr
from workbench import edge_attribution as ea
from workbench import interventions
from workbench.circuit_graph import graph_for
from workbench.circuit_tasks import encode_pairs
from workbench.prompt_pairs import ioi_pairs

SIZES = (0, 10, 30, 100, 300, 1000, 2000, 4000, 8000, 16000, 32000, -1)


@contextlib.contextmanager
def _last_token_logits(model, last: torch.Tensor, found: dict):
    """The unembedding reads each row's last real token only (as ``circuit_runs`` does)."""
    unembed = model.module(model.spec.unembed)

    def pre(_m, args):
        h = args[0]
        return (h[torch.arange(h.shape[0]), last].unsqueeze(1), *args[1:])

    handles = [unembed.register_forward_pre_hook(pre),
               unembed.register_forward_hook(lambda _m, _a, out: found.__setitem__("logits", out[:, 0]))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def activation_patching_nodes(model, batch, graph) -> np.ndarray:
    """(writer,) M of the corrupted runs with one node's clean output patched in (all pairs)."""
    pairs, heads = len(batch), graph.n_heads
    clean: dict = {}
    with model.lock, torch.no_grad(), contextlib.ExitStack() as stack:
        for layer in range(graph.n_layers):
            for site in (interventions.HEADS, "mlp"):
                store = interventions._store_into(clean, (site, layer))
                stack.enter_context(interventions.site_hook(model, layer, site, store))
        stack.enter_context(interventions.site_hook(model, 0, "resid", interventions._store_into(clean, ("resid", 0))))
        found: dict = {}
        stack.enter_context(_last_token_logits(model, batch.last, found))
        model.hf_model(input_ids=batch.clean_ids, attention_mask=batch.attention_mask, use_cache=False)
        ld_clean = cr._logit_diffs(found["logits"].double(), batch, 1)[0]
    with model.lock, torch.no_grad(), _last_token_logits(model, batch.last, found):
        model.hf_model(input_ids=batch.corrupted_ids, attention_mask=batch.attention_mask, use_cache=False)
    ld_corr = cr._logit_diffs(found["logits"].double(), batch, 1)[0]
    gap = float((ld_clean - ld_corr).sum())

    def run(site, layer, edit, rows):
        last = batch.last.repeat(rows)
        with model.lock, torch.no_grad(), interventions.site_hook(model, layer, site, edit), \
                _last_token_logits(model, last, found):
            model.hf_model(input_ids=batch.corrupted_ids.repeat(rows, 1),
                           attention_mask=batch.attention_mask.repeat(rows, 1), use_cache=False)
        return ((cr._logit_diffs(found["logits"].double(), batch, rows) - ld_corr).sum(1) / gap).numpy()

    out = np.zeros(len(graph.writers))
    out[0] = run("resid", 0, lambda x: clean[("resid", 0)], 1)[0]
    for layer in range(graph.n_layers):
        source = clean[(interventions.HEADS, layer)]
        dim = source.shape[-1] // heads

        def write(value, source=source, dim=dim):
            value = value.clone()
            for h in range(heads):
                cols = slice(h * dim, (h + 1) * dim)
                value[h * pairs : (h + 1) * pairs, :, cols] = source[:, :, cols]
            return value

        base = cr.writer_index(graph, "head", layer, 0)
        out[base : base + heads] = run(interventions.HEADS, layer, write, heads)
        mlp = run("mlp", layer, lambda x, layer=layer: clean[("mlp", layer)], 1)
        out[cr.writer_index(graph, "mlp", layer)] = mlp[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-rows", type=int, default=40, help="circuit x pair rows per ablation forward")
    parser.add_argument("--no-act", action="store_true", help="skip activation patching of the nodes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        batch = encode_pairs(model, ioi_pairs(model, args.pairs, 0, wb.settings), wb.settings)
    graph = graph_for(model)
    n_edges = len(graph.edges)
    sizes = sorted({n_edges if s < 0 else min(s, n_edges) for s in SIZES})
    print(f"model {args.model}: {graph.n_layers} layers x {graph.n_heads} heads, {len(graph.writers)} writers, "
          f"{n_edges} edges; {len(batch)} IOI pairs, {batch.clean_ids.shape[1]} tokens max; "
          f"process CPU seconds, {args.threads} thread(s)", flush=True)

    results, seconds = {}, {}
    for method in ("atp", "relp", "ig"):
        results[method], seconds[method] = cpu(lambda method=method: ea.attribute_edges(
            model, batch, graph, method, steps=args.steps))
        print(f"{method:<6} {seconds[method]:8.1f} s   (wall {results[method].seconds:.1f} s)", flush=True)
    if not args.no_act:
        act, seconds["act"] = cpu(lambda: activation_patching_nodes(model, batch, graph))
        print(f"act nodes {seconds['act']:8.1f} s  ({len(graph.writers)} nodes)", flush=True)
        for method in results:
            print(f"RATIO activation_patching_nodes / {method} = {seconds['act'] / seconds[method]:.2f}")
            r = np.corrcoef(act, results[method].node_scores)[0, 1]
            print(f"  node scores vs activation patching: Pearson r = {r:.3f}")
        top = np.argsort(-np.abs(act[1:]))[:10] + 1
        print("  top-10 nodes by |activation patching M|:",
              ", ".join(f"{graph.writers[i].name} {act[i]:+.3f}" for i in top))

    curves = {}
    for method, result in results.items():
        curves[method], seconds[f"curve {method}"] = cpu(lambda result=result: cr.faithfulness_curve(
            model, batch, graph, result.edge_scores, sizes, "corrupted", max_rows=args.max_rows))
        curve = curves[method]
        print(f"curve {method}: {seconds[f'curve {method}']:.1f} s for {len(sizes)} circuits "
              f"({seconds[f'curve {method}'] / len(sizes):.1f} s each)", flush=True)
        print("  sizes  ", " ".join(f"{s:>7d}" for s in curve.sizes))
        print("  M      ", " ".join(f"{m:>7.3f}" for m in curve.metric))
        print(f"  area(log size) = {cr.area(curve.sizes, curve.metric, n_edges):.3f}, "
              f"area(fraction) = {cr.area(curve.sizes, curve.metric, n_edges, 'fraction'):.3f}, "
              f"80% circuit = {cr.smallest_recovering(curve.sizes, curve.metric, 0.8)} edges", flush=True)
    heads = [i for i, node in enumerate(graph.writers) if node.kind == "head"]
    for method, result in results.items():
        order = sorted(heads, key=lambda i: -abs(result.node_scores[i]))[:20]
        print(f"top-20 heads by |node score|, {method}:",
              ", ".join(f"{graph.writers[i].name} {result.node_scores[i]:+.3f}" for i in order))


if __name__ == "__main__":
    main()
