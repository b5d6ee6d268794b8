"""Benchmark: classifying every MLP neuron from the weights vs one plain forward pass.

Run with ``make bench`` (or ``.venv/bin/python -m bench.bench_neurons``). Prints median
wall times and their ratios, all measured in this one run, on the default model:

* forward          plain HF forward pass on a short prompt (no nnsight)
* classes          cosines + classes + per-layer fractions for every neuron (no cache)
* classes folded   the same with the preceding norm folded into w_gate / w_in
* classes cached   the same request again, answered from the DuckDB store
* vocab            one neuron's vocabulary projection (W_U · w_out, W_U · w_in)
* effect           the causal check: clean + scaled traced runs of the prompt
* contexts         (with --contexts) top contexts of every neuron over the bundled corpus, once
"""

from __future__ import annotations

import argparse

from bench.common import median_seconds, throwaway_workbench
from workbench import prompts, tracing
from workbench.analyses import neuron_classes as neurons
from workbench.analyses import neuron_contexts, neuron_effect, neuron_vocab

PROMPT = "The capital of France is"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--contexts", action="store_true", help="also time the corpus pass (slow)")
    args = parser.parse_args()

    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        ids = prompts.encode(model, PROMPT, wb.settings).ids
        plain, folded = neurons.NeuronClassRequest(), neurons.NeuronClassRequest(fold_norm=True)
        vocab_request = neuron_vocab.NeuronVocabRequest(model.info.n_layers // 2, 0)
        effect_request = neuron_effect.NeuronEffectRequest(PROMPT, model.info.n_layers // 2, 0, factor=0.0)

        tracing.forward_logits(model, ids)  # warm-up
        neurons.compute(model, plain)
        times = {
            "forward": median_seconds(lambda: tracing.forward_logits(model, ids), args.repeats),
            "classes": median_seconds(lambda: neurons.compute(model, plain), args.repeats),
            "classes folded": median_seconds(lambda: neurons.compute(model, folded), args.repeats),
        }
        wb.neuron_classes(args.model, plain)  # fill the store
        times["classes cached"] = median_seconds(lambda: wb.neuron_classes(args.model, plain), args.repeats)
        times["vocab"] = median_seconds(lambda: neuron_vocab.compute(model, vocab_request), args.repeats)
        tokens = prompts.token_strings(model, ids)
        times["effect"] = median_seconds(
            lambda: neuron_effect.compute(model, tokens, ids, effect_request), args.repeats)
        if args.contexts:
            text = neuron_contexts.corpus_text()
            request = neuron_contexts.NeuronContextsRequest(neuron_contexts.corpus_digest(text))
            times["contexts"] = median_seconds(lambda: neuron_contexts.compute(model, request, text), 1)

    n_neurons = neurons.layer_weights(model, 0, False).w_in.shape[0]
    print(f"model {args.model}: {model.info.n_layers} layers x {n_neurons} neurons, d_model {model.info.d_model}, "
          f"prompt {len(ids)} tokens")
    print(f"{'step':<16}{'median ms':>12}{'x forward':>12}")
    for name, seconds in times.items():
        print(f"{name:<16}{seconds * 1e3:>12.1f}{seconds / times['forward']:>12.2f}")
    print(f"RATIO neuron_classes_full_model / forward = {times['classes'] / times['forward']:.2f}")


if __name__ == "__main__":
    main()
