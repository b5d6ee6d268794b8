"""One good request per analysis of ``workbench.analyses.ANALYSES``, sized for the tiny test models:
the one table the analysis-wide tests (shape, bad input, export palette) iterate. A new analysis
must add its example here (``test_analyses.py`` fails until it does)."""

from __future__ import annotations

from workbench import concept_datasets
from workbench.analyses import ANALYSES
from workbench.analyses.activation_patching import ActivationPatchingRequest
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.circuit import CircuitRequest
from workbench.analyses.concept_depth import ConceptDepthRequest
from workbench.analyses.decoder_lens import DecoderLensRequest
from workbench.analyses.depth_use import DepthUseRequest
from workbench.analyses.future_lens import FutureLensRequest
from workbench.analyses.latent_language import LatentLanguageRequest
from workbench.analyses.lens_comparison import LensComparisonRequest as AllLensesRequest
from workbench.analyses.linear_shortcut import LinearShortcutRequest
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.analyses.neuron_classes import NeuronClassRequest
from workbench.analyses.neuron_contexts import NeuronContextsRequest, corpus_digest, corpus_text
from workbench.analyses.neuron_effect import NeuronEffectRequest
from workbench.analyses.neuron_vocab import NeuronVocabRequest
from workbench.analyses.patching import PatchingRequest
from workbench.analyses.patching_faithfulness import FaithfulnessRequest
from workbench.analyses.patchscope import PatchscopeRequest
from workbench.analyses.shortcut_grid import ShortcutGridRequest
from workbench.analyses.sink_levels import SinkLevelsRequest
from workbench.analyses.tuned_lens import LensComparisonRequest, TunedLensConfig

PROMPT = "The capital of France is"
PAIR = ("When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
TEXT_FIELDS = ("prompt", "clean", "prompts", "texts")  # the fields that carry a user's text


def examples() -> dict[str, object]:
    """Analysis name -> a request that runs on the tiny models (untrained tuned lens: step 0)."""
    factual = concept_datasets.builtin("factual").subset(40)
    return {
        "logit_lens": LogitLensRequest(PROMPT, " Paris"),
        "tuned_lens": LensComparisonRequest(PROMPT, " Paris", TunedLensConfig(chunk_tokens=32), 0, 1),
        "linear_shortcut": LinearShortcutRequest(PROMPT, " Paris", chunk_tokens=32, fit_chunks=12, eval_chunks=1),
        "latent_language": LatentLanguageRequest(task="repetition", max_prompts=3),
        "depth_use": DepthUseRequest(PROMPT),
        "decoder_lens": DecoderLensRequest(PROMPT, max_new_tokens=4),  # on a tiny T5 (conftest.model_for)
        "attention_sinks": SinkProbeRequest(prompt=PROMPT),
        "sink_levels": SinkLevelsRequest(prompts=(PROMPT, "one two three four")),
        "neuron_classes": NeuronClassRequest(),
        "neuron_vocab": NeuronVocabRequest(1, 3),
        "neuron_effect": NeuronEffectRequest(PROMPT, 1, 3, factor=2.0),
        "neuron_contexts": NeuronContextsRequest(corpus_digest(corpus_text()), chunk_tokens=32, top_k=2),
        "activation_patching": ActivationPatchingRequest(*PAIR),
        "patching": PatchingRequest(*PAIR),
        "patching_faithfulness": FaithfulnessRequest(n_pairs=2),
        "concept_depth": ConceptDepthRequest(factual.name, factual.texts, factual.labels),
        "patchscope": PatchscopeRequest(PROMPT, n_tokens=2),
        "shortcut_grid": ShortcutGridRequest(chunk_tokens=16, fit_chunks=8, eval_chunks=1),
        "lens_comparison": AllLensesRequest(PROMPT, chunk_tokens=32, eval_chunks=1),
        "circuit": CircuitRequest(task="csv", n_pairs=2, methods=("atp", "relp"), sizes=(0, 5, 50),
                                  csv_name="pairs", pairs=(PAIR, PAIR[1::-1] + PAIR[:1:-1])),
        "future_lens": FutureLensRequest(PROMPT, chunk_tokens=16, fit_chunks=4, eval_chunks=1, epochs=1),
    }


def analysis_names() -> set[str]:
    return {analysis.name for analysis in ANALYSES}
