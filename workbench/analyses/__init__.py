"""Analyses: one module per analysis, each naming itself in one ``Analysis`` (see ``base``).

``ANALYSES`` is the one explicit list: the registry (CLI names, export bundles), the per-layer
summaries, the compare page and the test matrices iterate it. An analysis module's file name is
its ``name``, its cache key and its CLI name.
"""

from __future__ import annotations

from workbench.analyses import (  # noqa: E402, I001 (after base: each module builds an Analysis)
    activation_patching,
    attention_sinks,
    circuit,
    concept_depth,
    decoder_lens,
    depth_use,
    future_lens,
    latent_language,
    lens_comparison,
    linear_shortcut,
    logit_lens,
    neuron_classes,
    neuron_contexts,
    neuron_effect,
    neuron_vocab,
    patching,
    patching_faithfulness,
    patchscope,
    shortcut_grid,
    sink_levels,
    tuned_lens,
)
from workbench.analyses.base import (  # noqa: F401 (the analysis shape, re-exported)
    Analysis,
    CompareInputs,
    Progress,
    request_digest,
    request_from_json,
    request_json,
    silent,
)

ANALYSES: tuple[Analysis, ...] = (
    logit_lens.ANALYSIS,
    tuned_lens.ANALYSIS,
    linear_shortcut.ANALYSIS,
    shortcut_grid.ANALYSIS,
    lens_comparison.ANALYSIS,
    future_lens.ANALYSIS,
    latent_language.ANALYSIS,
    depth_use.ANALYSIS,
    attention_sinks.ANALYSIS,
    sink_levels.ANALYSIS,
    neuron_classes.ANALYSIS,
    neuron_vocab.ANALYSIS,
    neuron_effect.ANALYSIS,
    neuron_contexts.ANALYSIS,
    activation_patching.ANALYSIS,
    patching.ANALYSIS,
    patching_faithfulness.ANALYSIS,
    circuit.ANALYSIS,
    concept_depth.ANALYSIS,
    decoder_lens.ANALYSIS,
    patchscope.ANALYSIS,
)
