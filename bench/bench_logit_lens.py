"""Benchmark: logit lens over all layers vs one plain forward pass, on the default model.

Run with ``make bench`` (or ``.venv/bin/python -m bench.bench_logit_lens``). Prints
median wall times and their ratios, all measured in this one run:

* forward      plain HF forward pass (no nnsight)
* trace        nnsight trace recording the residual stream at every layer
* lens         full logit lens: one trace decoding every layer at every position inside it
               (top-k, KL to the final distribution, target rank), as the workbench runs it
* decode after the same statistics from the recorded residual stream, all slots decoded at once
               after the trace (the pre-remote design; more memory, one request less portable)
* lens cached  the same request again, answered from the DuckDB store
"""

from __future__ import annotations

import argparse

import torch

from bench.common import interleaved_medians, median_seconds, throwaway_workbench
from workbench import prompts, tracing
from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.lenses import kl_divergence

PROMPT = (
    "The Eiffel Tower, completed in 1889 for the World's Fair, stands on the Champ de Mars in "
    "the city of Paris, which is the capital of France"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        encoded = prompts.encode(model, PROMPT, wb.settings)
        request = LogitLensRequest(PROMPT, target=" France")
        target = prompts.single_token_id(model, request.target)
        ids = encoded.ids

        def lens():
            stats = logit_lens.lens_statistics(model, ids, request.top_k, target)
            logit_lens.compute(model, encoded.tokens, stats, request, target)

        def decode_after():
            logprobs = torch.log_softmax(model.decode(tracing.residual_stream(model, ids).resid), dim=-1)
            logprobs.topk(request.top_k, dim=-1)
            kl_divergence(logprobs[-1], logprobs)

        tracing.forward_logits(model, ids)  # warm-up
        lens()
        forward = median_seconds(lambda: tracing.forward_logits(model, ids), args.repeats)
        trace = median_seconds(lambda: tracing.residual_stream(model, ids), args.repeats)
        full, after = interleaved_medians([lens, decode_after], args.repeats)
        wb.logit_lens(args.model, request)  # fill the store
        cached = median_seconds(lambda: wb.logit_lens(args.model, request), args.repeats)

    print(f"model {args.model}: {model.info.n_layers} layers, {len(ids)} tokens, vocab {model.info.vocab_size}")
    print(f"{'step':<12}{'median ms':>12}{'x forward':>12}")
    rows = [("forward", forward), ("trace", trace), ("lens", full), ("decode after", after), ("lens cached", cached)]
    for name, seconds in rows:
        print(f"{name:<12}{seconds * 1e3:>12.1f}{seconds / forward:>12.2f}")
    print(f"RATIO logit_lens_all_layers / forward = {full / forward:.2f}")
    print(f"RATIO lens in the trace / decoded after the trace = {full / after:.2f}")


if __name__ == "__main__":
    main()
