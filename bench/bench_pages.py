"""Benchmark: every page's default request on the default model, as a new user meets it.

Run with ``.venv/bin/python -m bench.bench_pages`` (part of ``make bench``). The model is loaded
first and every request runs on a cold result cache (a throwaway store), so each row is what a
first visit costs. Printed per page, measured in this one run:

* first figure  seconds until the page can draw its first figure (for patching: the AtP/RelP
                maps, reported as a partial result before activation patching runs)
* full          seconds until the whole default request is done
* x forward     ``full`` divided by one plain forward pass of the default prompt

Times are process CPU seconds on one thread (``torch.set_num_threads(1)``; ``--wall`` for wall
clock, ``--threads 2`` for two cores), which a busy shared machine disturbs far less than wall
time. The defaults below are the pages' own (``app_pages/*.py``): keep them in step.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import throwaway_workbench
from workbench import concept_datasets, prompts, tracing
from workbench.analyses import (
    attention_sinks,
    concept_depth,
    depth_use,
    latent_language,
    linear_shortcut,
    logit_lens,
    neuron_classes,
    neuron_effect,
    neuron_vocab,
    patching,
    sink_levels,
)
from workbench.analyses.patching import IOI_PAIR

PROMPT = "The capital of France is"


def page_requests() -> list[tuple[str, object, object]]:
    """(page, analysis, its default request) in the order a page draws them."""
    factual = concept_datasets.builtin("factual").subset(200)
    return [
        ("Logit lens", logit_lens.ANALYSIS, logit_lens.LogitLensRequest(PROMPT, " Paris")),
        ("Attention sinks: probe", attention_sinks.ANALYSIS, attention_sinks.SinkProbeRequest(
            prompt="The capital of France is Paris, and the capital of Italy is Rome.")),
        ("Attention sinks: levels", sink_levels.ANALYSIS, sink_levels.SinkLevelsRequest(
            prompts=sink_levels.default_prompts())),
        ("Tuned lens: linear shortcut", linear_shortcut.ANALYSIS,
         linear_shortcut.LinearShortcutRequest(PROMPT, " Paris")),
        ("Latent language", latent_language.ANALYSIS, latent_language.LatentLanguageRequest()),
        ("Depth use", depth_use.ANALYSIS, depth_use.DepthUseRequest(
            "The Eiffel Tower is located in the city of Paris, which is the capital of France")),
        ("Neurons: classes", neuron_classes.ANALYSIS, neuron_classes.NeuronClassRequest()),
        ("Neurons: vocabulary", neuron_vocab.ANALYSIS, neuron_vocab.NeuronVocabRequest(0, 0)),
        ("Neurons: effect", neuron_effect.ANALYSIS, neuron_effect.NeuronEffectRequest(PROMPT, 0, 0)),
        ("Patching", patching.ANALYSIS, patching.PatchingRequest(*IOI_PAIR)),
        ("Concept depth: factual", concept_depth.ANALYSIS, concept_depth.ConceptDepthRequest(
            factual.name, factual.texts, factual.labels)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--wall", action="store_true", help="wall-clock seconds instead of process CPU seconds")
    parser.add_argument("--only", default="", help="run only pages whose name contains this text")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (with --wall: e.g. 2 for two cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time

    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        ids = prompts.encode(model, PROMPT, wb.settings).ids
        tracing.forward_logits(model, ids)  # warm-up
        start = clock()
        for _ in range(5):
            tracing.forward_logits(model, ids)
        forward = (clock() - start) / 5
        print(f"model {args.model}: one forward pass of {len(ids)} tokens = {forward * 1000:.0f} ms "
              f"({'wall' if args.wall else 'process CPU'}, {args.threads} thread{'s' * (args.threads > 1)})")
        print(f"{'page':30s} {'first figure s':>15s} {'full s':>9s} {'x forward':>10s}")
        for page, analysis, request in page_requests():
            if args.only and args.only.lower() not in page.lower():
                continue
            first: list[float] = []

            def seen(_partial, first=first) -> None:
                if not first:
                    first.append(clock())

            start = clock()
            try:
                wb.run(analysis, args.model, request, on_partial=seen)
            except Exception as exc:  # a page whose default cannot run here says so in the table
                print(f"{page:30s} {'failed: ' + type(exc).__name__ + ': ' + str(exc)[:60]}")
                continue
            full = clock() - start
            shown = (first[0] - start) if first else full
            print(f"{page:30s} {shown:15.2f} {full:9.2f} {full / forward:10.1f}")
            print(f"RATIO page_{analysis.name} / forward = {full / forward:.1f}")


if __name__ == "__main__":
    main()
