"""Benchmark: the future lens's fitting time and its decode cost per token vs a forward pass.

Run with ``.venv/bin/python -m bench.bench_future_lens [--model NAME] [--fit-chunks N] [--epochs E]``.

* fitting       process CPU seconds of each phase of ``analyses.future_lens.run`` on the request's
                corpus: reading the fitting states (batched forwards), the candidate vocabulary,
                the closed-form maps (a) of every slot and horizon, the readouts (b), and the full
                held-out scoring (``Workbench.future_lens``, epochs as given, minus the phases above
                is not attempted: the whole run is timed on its own as well).
* decode        median wall seconds per prompt token of applying the fitted lens at every position:
                one residual trace, then per slot and horizon an affine map and the model's Unembed,
                against a plain forward pass (and the logit lens: the trace and one decode per slot).
"""

from __future__ import annotations

import argparse
import math

import torch

from bench.bench_logit_lens import PROMPT
from bench.common import cpu, median_seconds, throwaway_workbench
from workbench import lenses, prompts, tracing
from workbench.analyses import future_lens
from workbench.analyses.future_lens import FutureLensRequest, apply_affine, fit_affine, with_ones
from workbench.analyses.tuned_lens import corpus_chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--fit-chunks", type=int, default=24)
    parser.add_argument("--eval-chunks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    request = FutureLensRequest(PROMPT, fit_chunks=args.fit_chunks, eval_chunks=args.eval_chunks, epochs=args.epochs)
    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        n_slots, horizons = model.info.n_layers + 1, future_lens.HORIZONS
        chunks = corpus_chunks(model, request.corpus, "train", request.chunk_tokens, request.fit_chunks)
        fit, read_s = cpu(lambda: future_lens.read_positions(model, chunks, lambda done: None))
        vocab, vocab_s = cpu(lambda: future_lens.candidate_ids(model, fit))

        def maps():
            out = []
            for slot in range(n_slots):
                x1 = with_ones(fit.states[slot])
                gram = (x1.T @ x1).double()
                out.append([fit_affine(gram, x1.T.double() @ fit.finals[i].double(), request.ridge)
                            for i in range(len(horizons))])
            return out

        solutions, maps_s = cpu(maps)
        one_readout_s = 0.0
        if request.epochs:  # one slot x horizon, times their number: every readout costs the same
            _, one_readout_s = cpu(lambda: future_lens.train_readout(
                model, fit.states[n_slots // 2], fit.targets[1], solutions[n_slots // 2][1], vocab, request))
        readouts_s = one_readout_s * n_slots * len(horizons)
        _, run_s = cpu(lambda: wb.future_lens(args.model, request))

        ids = prompts.encode(model, PROMPT, wb.settings).ids
        seq = len(ids)

        def forward():
            tracing.forward_logits(model, ids)

        def logit():
            resid = tracing.residual_stream(model, ids).resid
            for slot in range(n_slots):
                lenses.decode(model, resid[slot])

        def future():
            resid = tracing.residual_stream(model, ids).resid
            with torch.no_grad():
                for slot in range(n_slots):
                    for solution in solutions[slot]:
                        lenses.decode(model, apply_affine(resid[slot], solution))

        for action in (forward, logit, future):
            action()  # warm-up
        measured = {name: median_seconds(action, args.repeats)
                    for name, action in (("forward", forward), ("logit lens", logit), ("future lens", future))}
    n_fit = fit.states.shape[1]
    print(f"model {args.model}: {model.info.n_layers} layers, d_model {model.info.d_model}, "
          f"vocab {model.info.vocab_size}; {n_fit} fitting positions, {len(vocab)} candidate tokens, "
          f"epochs {request.epochs} ({math.ceil(n_fit / future_lens.TRAIN_BATCH)} Adam steps each)")
    print("fitting, process CPU seconds:")
    for name, seconds in (("read states", read_s), ("candidate vocab", vocab_s), ("maps (a), all", maps_s),
                          ("readouts (b), all (one x slots x horizons)", readouts_s),
                          ("whole run (incl. held-out scoring)", run_s)):
        print(f"  {name:<44}{seconds:>8.1f}")
    forward_s = measured["forward"]
    print(f"decode, {seq} prompt tokens, all {n_slots} slots x {len(horizons)} horizons:")
    print(f"{'  step':<16}{'ms/token':>10}{'x forward':>11}")
    for name, seconds in measured.items():
        print(f"  {name:<14}{seconds * 1e3 / seq:>10.2f}{seconds / forward_s:>11.2f}")
    print(f"RATIO future_lens_decode / forward = {measured['future lens'] / forward_s:.2f}")
    print(f"CPU_SECONDS future_lens_run = {run_s:.1f}")


if __name__ == "__main__":
    main()
