"""Benchmark: cost per token of the lens-suite analyses vs a plain forward pass, on one model.

Run with ``make bench`` (or ``.venv/bin/python -m bench.bench_lenses [--model NAME]``). All times
are medians measured in this one run; ratios are relative to the plain forward pass:

* forward       plain HF forward pass
* logit lens    residual trace + decoding every layer at every position
* tuned lens    the same with (random) affine translators applied before decoding
* depth use     sublayer trace + one batched run skipping each block in turn
* tuned step    one tuned-lens training step (all layers, one chunk)
"""

from __future__ import annotations

import argparse

import torch

from bench.bench_logit_lens import PROMPT
from bench.common import median_seconds, throwaway_workbench
from workbench import lens_training, lenses, prompts, tracing
from workbench.analyses import depth_use, tuned_lens
from workbench.analyses.depth_use import DepthUseRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        encoded = prompts.encode(model, PROMPT, wb.settings)
        ids, seq = encoded.ids, len(encoded.ids)
        translators = lenses.AffineLens(model.info.n_layers, model.info.d_model)
        with torch.no_grad():
            translators.weight.normal_(0, 0.01)
        optimizer = lens_training.make_optimizer(translators, tuned_lens.TunedLensConfig())

        def logit():
            model.decode(tracing.residual_stream(model, ids).resid)

        def tuned():
            lenses.lens_logits(model, translators, tracing.residual_stream(model, ids).resid)

        def depth():
            clean = tracing.sublayer_stream(model, ids)
            resid, logits = tracing.skip_layers(model, ids, list(range(model.info.n_layers)))
            depth_use.compute(model.name, encoded.tokens, clean, resid, logits, DepthUseRequest(PROMPT))

        def step():
            resid = tracing.residual_stream(model, ids).resid
            lens_training.training_step(model, translators, optimizer, resid, 1.0)

        timings = {"forward": lambda: tracing.forward_logits(model, ids), "logit lens": logit,
                   "tuned lens": tuned, "depth use": depth, "tuned step": step}
        for action in timings.values():
            action()  # warm-up
        measured = {name: median_seconds(action, args.repeats) for name, action in timings.items()}
    forward = measured["forward"]
    print(f"model {args.model}: {model.info.n_layers} layers, {seq} tokens, vocab {model.info.vocab_size}")
    print(f"{'step':<12}{'ms/token':>10}{'x forward':>11}")
    for name, seconds in measured.items():
        print(f"{name:<12}{seconds * 1e3 / seq:>10.2f}{seconds / forward:>11.2f}")
    for name in ("logit lens", "tuned lens", "depth use", "tuned step"):
        print(f"RATIO {name.replace(' ', '_')} / forward = {measured[name] / forward:.2f}")


if __name__ == "__main__":
    main()
