"""Per-layer summaries of every analysis, placed on normalised depth so models of different
depths can be overlaid (as Jin et al. 2024 compare concept depth across models on l/L).

Owns the depth convention, used by every summary and the compare page:

* a residual-stream slot ``s`` (0 = the input to block 0, ``s`` = the output of block
  ``s - 1``) sits at depth ``s / L``;
* a quantity of block ``l`` (its attention, MLP or neurons, or a probe on its output) sits at
  ``(l + 1) / L``, the depth of the residual slot it writes.

So depth 0 is the embedding and depth 1 the last block's output, for every model. A summary is
one named series per (analysis, metric); ``summary_table`` stacks them into a tidy table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.analyses import attention_sinks, concept_depth, depth_use, logit_lens, neurons, patching

ENRICHMENT_FAMILY = ("enrichment", "conditional enrichment", "atypical enrichment", "atypical conditional enrichment")
DEPLETION_FAMILY = ("depletion", "conditional depletion", "atypical depletion", "atypical conditional depletion")


@dataclass(frozen=True, eq=False)
class LayerSummary:
    """One per-layer number of one analysis on one model."""

    model_name: str
    analysis: str  # e.g. "logit_lens"
    metric: str  # e.g. "KL(final ‖ layer), last position (nats)"
    depth: np.ndarray  # (points,) float64 in [0, 1]
    values: np.ndarray  # (points,) float64
    layer_labels: tuple[str, ...]  # e.g. ("embed", "0", ...) or ("0", "1", ...)

    def __post_init__(self):
        if not (self.depth.shape == self.values.shape == (len(self.layer_labels),)):
            raise ValueError(f"summary {self.metric}: depth {self.depth.shape}, values {self.values.shape}, "
                             f"{len(self.layer_labels)} labels")


def slot_depth(n_layers: int) -> np.ndarray:
    """Depth of residual slots 0..L (embedding .. last block's output)."""
    return np.arange(n_layers + 1) / n_layers


def block_depth(n_layers: int) -> np.ndarray:
    """Depth of blocks 0..L-1 (where each writes into the residual stream)."""
    return (np.arange(n_layers) + 1) / n_layers


def _blocks(model_name: str, analysis: str, metric: str, values) -> LayerSummary:
    values = np.asarray(values, dtype=np.float64)
    return LayerSummary(model_name, analysis, metric, block_depth(len(values)), values,
                        tuple(str(i) for i in range(len(values))))


def _slots(model_name: str, analysis: str, metric: str, values, labels) -> LayerSummary:
    values = np.asarray(values, dtype=np.float64)
    return LayerSummary(model_name, analysis, metric, slot_depth(len(values) - 1), values, tuple(labels))


def logit_lens_summary(result: logit_lens.LogitLensResult) -> list[LayerSummary]:
    """KL to the final distribution and, with a target, its rank, both at the last position."""
    labels = [str(x) for x in result.layer_labels]
    out = [_slots(result.model_name, logit_lens.NAME, "lens KL(final ‖ layer), last position (nats)",
                  result.kl_to_final[:, -1], labels)]
    if result.target_token:
        out.append(_slots(result.model_name, logit_lens.NAME, f"lens rank of {result.target_token!r} (1 = top)",
                          result.target_rank, labels))
    return out


def patching_summary(result: patching.PatchingResult) -> list[LayerSummary]:
    """Largest activation-patching effect on m over positions, per layer and site."""
    resid = np.abs(result.act_resid).max(axis=1).astype(np.float64)  # block l's input = residual slot l
    name = result.model_name
    return [
        LayerSummary(name, patching.NAME, "patching max |effect| on m: residual stream",
                     slot_depth(len(resid))[:-1], resid, tuple(str(i) for i in range(len(resid)))),
        _blocks(name, patching.NAME, "patching max |effect| on m: attention output", np.abs(result.act_attn).max(1)),
        _blocks(name, patching.NAME, "patching max |effect| on m: MLP output", np.abs(result.act_mlp).max(1)),
    ]


def neuron_summary(result: neurons.NeuronClassResult) -> list[LayerSummary]:
    """Share of each layer's neurons in the enrichment and the depletion families."""
    names = [str(n) for n in result.class_names]

    def share(family: tuple[str, ...]) -> np.ndarray:
        return result.fractions[:, [names.index(c) for c in family if c in names]].sum(axis=1)

    return [
        _blocks(result.model_name, neurons.NAME, "neurons: enrichment share", share(ENRICHMENT_FAMILY)),
        _blocks(result.model_name, neurons.NAME, "neurons: depletion share", share(DEPLETION_FAMILY)),
    ]


def sink_summary(result: attention_sinks.SinkProbeResult) -> list[LayerSummary]:
    """Mean sink score on position 0 over each layer's heads, and the share of heads above eps."""
    first = result.sink_scores[:, :, 0]
    return [
        _blocks(result.model_name, attention_sinks.NAME, "sinks: mean attention to position 0", first.mean(axis=1)),
        _blocks(result.model_name, attention_sinks.NAME, f"sinks: share of heads with score > {result.eps:g}",
                result.layer_sink_fraction[:, 0]),
    ]


def depth_use_summary(result: depth_use.DepthUseResult) -> list[LayerSummary]:
    """Output change (KL at the last position) when each block is skipped."""
    return [_blocks(result.model_name, depth_use.NAME, "depth use: KL when the block is skipped (nats)",
                    result.skip_kl_last)]


def concept_depth_summary(result: concept_depth.ConceptDepthResult) -> list[LayerSummary]:
    """Probe test accuracy per block."""
    return [_blocks(result.model_name, concept_depth.NAME, f"probe accuracy: {result.task}", result.accuracy)]


SUMMARIES = {
    logit_lens.NAME: logit_lens_summary,
    patching.NAME: patching_summary,
    neurons.NAME: neuron_summary,
    attention_sinks.NAME: sink_summary,
    depth_use.NAME: depth_use_summary,
    concept_depth.NAME: concept_depth_summary,
}


def summarise(analysis: str, result) -> list[LayerSummary]:
    """The per-layer summaries of one result of ``analysis`` (a module NAME in ``SUMMARIES``)."""
    return SUMMARIES[analysis](result)


def summary_table(summaries: list[LayerSummary]) -> pd.DataFrame:
    """Tidy table: one row per (model, analysis, metric, layer) with its depth and value."""
    rows = [
        {"model": s.model_name, "analysis": s.analysis, "metric": s.metric, "layer": label,
         "depth": float(d), "value": float(v)}
        for s in summaries for label, d, v in zip(s.layer_labels, s.depth, s.values, strict=True)
    ]
    return pd.DataFrame(rows, columns=["model", "analysis", "metric", "layer", "depth", "value"])
