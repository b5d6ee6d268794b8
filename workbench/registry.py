"""The catalogue of analyses that can run without the UI: for each, its request type, the
``Workbench`` method that runs it and the named figures drawn from its result.

Owns the names the CLI, export bundles and the compare page use (``logit_lens``,
``patching:resid`` ...) and the JSON <-> request conversion, so an export manifest can name a
figure and rebuild it exactly. Pages may draw figures directly; anything that must be
regenerable goes through here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import plotly.graph_objects as go

from workbench import concept_datasets
from workbench.analyses import (
    attention_sinks,
    concept_depth,
    depth_use,
    faithfulness,
    latent_language,
    logit_lens,
    neuron_effect,
    neuron_vocab,
    neurons,
    patching,
    sink_levels,
)
from workbench.errors import BadRequest
from workbench.figures import attention_sinks as sink_figures
from workbench.figures import concept_depth as concept_figures
from workbench.figures import depth_use as depth_figures
from workbench.figures import latent_language as language_figures
from workbench.figures import logit_lens as lens_figures
from workbench.figures import neurons as neuron_figures
from workbench.figures import patching as patching_figures


@dataclass(frozen=True)
class AnalysisEntry:
    """One analysis as the CLI and export see it."""

    module: ModuleType  # the analysis module: NAME, VERSION, RESULT_TYPE
    request_type: type
    method: str  # the ``Workbench`` method: (model_name, request, progress) -> result
    figures: dict[str, Callable[[object], go.Figure]]
    title: str

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def version(self) -> int:
        return self.module.VERSION

    def run(self, workbench, model_name: str, request, progress=lambda f, m: None):
        return getattr(workbench, self.method)(model_name, request, progress)

    def figure(self, name: str, result) -> go.Figure:
        if name not in self.figures:
            raise BadRequest(f"{self.name} has no figure {name!r}. Figures: {', '.join(self.figures)}.")
        return self.figures[name](result)

    def request(self, data: dict):
        """The request from its JSON fields (a concept-depth task may be named instead of listed)."""
        if self.module is concept_depth and "texts" not in data:
            data = _bundled_concept_task(data)
        return request_from_json(self.request_type, data)


def _bundled_concept_task(data: dict) -> dict:
    """{"task": "factual", "limit": 200, ...} -> the request fields with the bundled texts."""
    data = dict(data)
    task = data.get("task")
    if task not in concept_datasets.TASKS:
        raise BadRequest(f"Name a bundled concept task ({', '.join(concept_datasets.TASKS)}) or give texts and labels.")
    dataset = concept_datasets.builtin(task).subset(data.pop("limit", None))
    return {**data, "texts": list(dataset.texts), "labels": list(dataset.labels)}


ENTRIES: dict[str, AnalysisEntry] = {
    entry.name: entry
    for entry in (
        AnalysisEntry(logit_lens, logit_lens.LogitLensRequest, "logit_lens",
                      {"heatmap": lens_figures.heatmap, "layer_curves": lens_figures.layer_curves}, "Logit lens"),
        AnalysisEntry(depth_use, depth_use.DepthUseRequest, "depth_use",
                      {"contributions": depth_figures.contributions, "skip_effects": depth_figures.skip_effects},
                      "Depth use"),
        AnalysisEntry(attention_sinks, attention_sinks.SinkProbeRequest, "attention_sinks", {
            "layer_token_heatmap": sink_figures.layer_token_heatmap,
            "layer_head_heatmap": sink_figures.layer_head_heatmap,
            "first_norm_curve": sink_figures.first_norm_curve,
            "cosine_heatmap": sink_figures.cosine_heatmap,
            "norm_heatmap": sink_figures.norm_heatmap,
        }, "Attention sinks"),
        AnalysisEntry(sink_levels, sink_levels.SinkLevelsRequest, "sink_levels", {
            "onset_histogram": sink_figures.onset_histogram, "lifetime_scatter": sink_figures.lifetime_scatter,
        }, "Attention sinks over a prompt set"),
        AnalysisEntry(latent_language, latent_language.LatentLanguageRequest, "latent_language", {
            "probabilities": language_figures.probabilities,
            "probabilities_correct": partial(language_figures.probabilities, only_correct=True),
        }, "Latent language"),
        AnalysisEntry(neurons, neurons.NeuronClassRequest, "neuron_classes", {
            "class_fractions": neuron_figures.class_fractions,
            "class_fractions_no_orthogonal": partial(neuron_figures.class_fractions, include_orthogonal=False),
            "cosine_distribution": neuron_figures.cosine_distribution,
        }, "Neuron classes"),
        AnalysisEntry(neuron_vocab, neuron_vocab.NeuronVocabRequest, "neuron_vocab",
                      {"vocab_projection": neuron_figures.vocab_projection}, "One neuron's vocabulary projection"),
        AnalysisEntry(neuron_effect, neuron_effect.NeuronEffectRequest, "neuron_effect",
                      {"effect": neuron_figures.effect}, "One neuron scaled"),
        AnalysisEntry(patching, patching.PatchingRequest, "patching", {
            component: partial(patching_figures.method_heatmaps, component=component)
            for component in patching.COMPONENTS
        }, "Activation / attribution / relevance patching"),
        AnalysisEntry(faithfulness, faithfulness.FaithfulnessRequest, "patching_faithfulness", {
            "pearson": partial(patching_figures.correlation_table, measure="pearson"),
            "spearman": partial(patching_figures.correlation_table, measure="spearman"),
            "topk_overlap": partial(patching_figures.correlation_table, measure="topk_overlap"),
            "scatter": patching_figures.scatter_grid,
        }, "Patching faithfulness scoreboard"),
        AnalysisEntry(concept_depth, concept_depth.ConceptDepthRequest, "concept_depth",
                      {"curves": lambda result: concept_figures.curves([result])}, "Concept depth"),
    )
}


def entry(name: str) -> AnalysisEntry:
    if name not in ENTRIES:
        raise BadRequest(f"Unknown analysis {name!r}. Analyses: {', '.join(ENTRIES)}.")
    return ENTRIES[name]


def request_from_json(request_type: type, data: dict):
    """Rebuild a frozen request dataclass from its ``request_json`` form (lists back to tuples)."""
    if not isinstance(data, dict):
        raise BadRequest(f"A {request_type.__name__} is a JSON object, not {type(data).__name__}.")
    hints = typing.get_type_hints(request_type)
    names = {f.name for f in dataclasses.fields(request_type)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BadRequest(f"{request_type.__name__} has no field(s) {', '.join(unknown)}. "
                         f"Fields: {', '.join(sorted(names))}.")
    values = {key: _convert(hints[key], value, f"{request_type.__name__}.{key}") for key, value in data.items()}
    try:
        return request_type(**values)
    except (TypeError, ValueError) as exc:  # a required field is missing, or a value the request rejects
        raise BadRequest(f"{request_type.__name__}: {exc}") from None


JSON_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _convert(hint, value, where: str):
    """``value`` (parsed JSON) as the annotated type: nested requests rebuilt, lists to tuples, and
    a clear error for the wrong kind of value (JSON true is not an int, "5" is not a number)."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise BadRequest(f"{where} is a JSON object, not {json.dumps(value)[:40]}.")
        return request_from_json(hint, value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise BadRequest(f"{where} is a list, not {json.dumps(value)[:40]}.")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    accepted = JSON_TYPES.get(hint)
    if accepted and (not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool))):
        raise BadRequest(f"{where} must be {hint.__name__}, not {json.dumps(value)[:40]}.")
    return value
