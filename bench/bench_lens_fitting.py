"""Benchmark: fitting cost of the fitted lenses (linear shortcut, Jacobian lens) and their decode cost.

Run with ``.venv/bin/python -m bench.bench_lens_fitting [--model NAME]`` (one torch thread, on a
throwaway cache). Measured in this one run, with each kind's default ``lens_fitting.FitConfig``:

* fit            process CPU seconds (and wall seconds) to fit the lens from scratch
* decode         decoding every slot at every position of one chunk through the lens
                 (transform + final norm + unembedding), per token, relative to a plain forward
* held-out       mean over slots below the last of KL(final ‖ lens) and top-1 agreement, on
                 held-out chunks, against the logit lens: what the fitting time buys
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import interleaved_medians, throwaway_workbench
from workbench import lens_fitting, lenses, tracing
from workbench.analyses.tuned_lens import corpus_chunks, held_out_statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval-chunks", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        fitted = {}
        for kind in lens_fitting.FIT_KINDS:
            config = lens_fitting.default_config(kind)
            last = [-1.0]

            def report(fraction, message, last=last, kind=kind):
                if fraction is not None and fraction - last[0] >= 0.1:
                    last[0] = fraction
                    print(f"  {kind}: {fraction:4.0%} {message}", flush=True)

            cpu, wall = time.process_time(), time.perf_counter()
            fitted[kind] = lens_fitting.fit(model, config, report)
            fitted[kind].cpu_seconds = time.process_time() - cpu  # the whole process, one thread
            fitted[kind].seconds = time.perf_counter() - wall
        held_out = corpus_chunks(model, "python-reference", "heldout", 64, args.eval_chunks)
        ids = held_out[0]
        resid = tracing.residual_stream(model, ids).resid
        lens = fitted["linear_shortcut"].lens
        forward, logit, affine = interleaved_medians([
            lambda: tracing.forward_logits(model, ids),
            lambda: model.decode(resid),
            lambda: lenses.lens_logits(model, lens, resid),
        ], args.repeats, clock=time.process_time)
        totals = {name: None for name in ("logit lens", *lens_fitting.FIT_KINDS)}
        tokens = 0
        with torch.no_grad():
            for chunk in held_out:
                states = tracing.residual_stream(model, chunk).resid
                totals["logit lens"] = held_out_statistics(model.decode(states), chunk[1:], totals["logit lens"])
                for kind in lens_fitting.FIT_KINDS:
                    logits = lenses.lens_logits(model, fitted[kind].lens, states)
                    totals[kind] = held_out_statistics(logits, chunk[1:], totals[kind])
                tokens += len(chunk)

    seq = len(ids)
    print(f"\n{args.model}, one thread, {seq}-token chunks; forward {forward * 1e3:.0f} ms CPU "
          f"({forward / seq * 1e3:.2f} ms/token)")
    print(f"{'lens':18s} {'config':28s} {'fit CPU s':>10s} {'fit wall s':>11s} {'tokens':>7s} "
          f"{'decode/fwd':>11s} {'KL held-out':>12s} {'top-1':>6s}")
    rows = [("logit lens", None, logit)] + [(kind, fitted[kind], affine) for kind in lens_fitting.FIT_KINDS]
    for name, fit, decode_seconds in rows:
        stats = totals[name]
        kl = float(stats.kl[:-1].mean() / tokens)
        top1 = float(stats.top1[:-1].mean() / tokens)
        config = "" if fit is None else f"{fit.config.fit_chunks} x {fit.config.chunk_tokens} tokens"
        cpu = "-" if fit is None else f"{fit.cpu_seconds:.1f}"
        wall = "-" if fit is None else f"{fit.seconds:.1f}"
        used = "-" if fit is None else str(fit.tokens)
        print(f"{name:18s} {config:28s} {cpu:>10s} {wall:>11s} {used:>7s} {decode_seconds / forward:>10.2f}x "
              f"{kl:>12.3f} {top1:>6.3f}")
    print(f"(decode: every slot at every position of one chunk; KL and top-1: mean over slots below the last, "
          f"{tokens} held-out tokens)")


if __name__ == "__main__":
    main()
