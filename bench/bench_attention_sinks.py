"""Benchmark: one attention-sink probe vs one plain forward pass, on a bundled model.

Run with ``.venv/bin/python -m bench.bench_attention_sinks`` (``--model gemma3-270m`` for
Gemma). Prints median wall times and their ratios, all measured in this one run, the steps
interleaved (forward, trace, probe, forward, ...) so that load from other processes hits them alike:

* forward       plain HF forward pass (no nnsight)
* trace         nnsight trace recording every head's attention, the residual stream and MLP writes
* probe         full probe: trace + sink scores, window, classification, MLP alignment
* probe cached  the same request again, answered from the DuckDB store
"""

from __future__ import annotations

import argparse

from bench.bench_logit_lens import PROMPT
from bench.common import interleaved_medians, median_seconds, throwaway_workbench
from workbench import prompts, tracing
from workbench.analyses import attention_sinks
from workbench.analyses.attention_sinks import SinkProbeRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        encoded = prompts.encode(model, PROMPT, wb.settings)
        ids = encoded.ids
        request = SinkProbeRequest(prompt=PROMPT)
        bos = attention_sinks.first_is_bos(ids, model.tokenizer.bos_token_id)

        def probe():
            trace = tracing.attention_and_states(model, ids)
            attention_sinks.compute(model.name, encoded.tokens, bos, trace.attn, trace.resid, trace.mlp_write, request)

        tracing.forward_logits(model, ids)  # warm-up
        probe()
        forward, trace, full = interleaved_medians(
            [lambda: tracing.forward_logits(model, ids), lambda: tracing.attention_and_states(model, ids), probe],
            args.repeats,
        )
        wb.attention_sinks(args.model, request)  # fill the store
        cached = median_seconds(lambda: wb.attention_sinks(args.model, request), args.repeats)

    print(f"model {args.model}: {model.info.n_layers} layers, {model.info.n_heads} heads, {len(ids)} tokens")
    print(f"{'step':<14}{'median ms':>12}{'x forward':>12}")
    for name, seconds in [("forward", forward), ("trace", trace), ("probe", full), ("probe cached", cached)]:
        print(f"{name:<14}{seconds * 1e3:>12.1f}{seconds / forward:>12.2f}")
    print(f"RATIO attention_sink_probe / forward = {full / forward:.2f}")


if __name__ == "__main__":
    main()
