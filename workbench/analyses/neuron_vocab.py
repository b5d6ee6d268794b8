"""One neuron through the vocabulary: what its output (and input) weights promote.

Geva et al. (2021), "Transformer Feed-Forward Layers Are Key-Value Memories"; the
vocabulary projection of neuron weights (``W_U · w_out`` and ``W_U · w_in``) as used to
decode specialised neurons with the final projection layer; the neuron's cosines and class
come from ``neurons`` (Gerstner & Schütze 2025).

``W_U`` is the plain unembedding matrix (vocab, d_model); the final norm's scale is not
folded in. Weights are sign-normalised as in ``neurons`` (gated MLPs), optionally with the
MLP's norm scales folded in. Also: search for the neurons whose ``w_out`` points most
towards one token's unembedding (cosine), over every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import prompts
from workbench.analyses import neuron_classes as neurons
from workbench.analyses.base import Analysis
from workbench.errors import BadRequest
from workbench.models import parts
from workbench.models.loader import LoadedModel

NAME = "neuron_vocab"
VERSION = 2  # 2: byte tokens shown as <0x..>
MAX_TOP_K = 50


@dataclass(frozen=True)
class NeuronVocabRequest:
    layer: int
    neuron: int
    fold_norm: bool = False
    top_k: int = 10

    def __post_init__(self):
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}.")
        if self.layer < 0 or self.neuron < 0:
            raise BadRequest("layer and neuron must be non-negative.")


@dataclass(frozen=True, eq=False)
class NeuronVocabResult:
    model_name: str
    layer: int
    neuron: int
    class_name: str
    cos_in_out: float
    cos_gate_out: float  # nan when the MLP is not gated
    cos_gate_in: float  # nan when the MLP is not gated
    flipped: bool  # w_in and w_out were negated by the sign normalisation
    out_top_tokens: np.ndarray  # (k,) str: largest W_U · w_out
    out_top_values: np.ndarray  # (k,) float32
    out_bottom_tokens: np.ndarray  # (k,) str: smallest W_U · w_out
    out_bottom_values: np.ndarray  # (k,) float32
    in_top_tokens: np.ndarray  # (k,) str: largest W_U · w_in
    in_top_values: np.ndarray  # (k,) float32
    in_bottom_tokens: np.ndarray  # (k,) str
    in_bottom_values: np.ndarray  # (k,) float32

    def __post_init__(self):
        k = self.out_top_tokens.shape
        for name in ("out_top_values", "out_bottom_tokens", "out_bottom_values", "in_top_tokens",
                     "in_top_values", "in_bottom_tokens", "in_bottom_values"):
            if getattr(self, name).shape != k:
                raise ValueError(f"NeuronVocabResult.{name} has shape {getattr(self, name).shape}, expected {k}")



def check_neuron(model: LoadedModel, layer: int, neuron: int) -> None:
    """BadRequest naming the valid ranges when (layer, neuron) does not exist in ``model``."""
    n_neurons = parts.mlp_weights(model.spec, model.hf_model, 0).w_in.shape[0]
    if not 0 <= layer < model.info.n_layers or not 0 <= neuron < n_neurons:
        raise BadRequest(
            f"{model.name} has layers 0..{model.info.n_layers - 1} and neurons 0..{n_neurons - 1} per layer; "
            f"got layer {layer}, neuron {neuron}."
        )


def _top_bottom(model: LoadedModel, scores: torch.Tensor, k: int):
    top, bottom = scores.topk(k), (-scores).topk(k)
    def decode(ids):
        return np.array(prompts.token_strings(model, ids))

    return (decode(top.indices), top.values.numpy().astype(np.float32),
            decode(bottom.indices), (-bottom.values).numpy().astype(np.float32))


def compute(model: LoadedModel, request: NeuronVocabRequest) -> NeuronVocabResult:
    check_neuron(model, request.layer, request.neuron)
    with torch.no_grad():
        weights = neurons.layer_weights(model, request.layer, request.fold_norm)
        cosines = neurons.layer_cosines(weights)
        flipped = bool(cosines.flipped[request.neuron]) if cosines.flipped is not None else False
        sign = -1.0 if flipped else 1.0
        w_out = weights.w_out[request.neuron] * sign
        w_in = weights.w_in[request.neuron] * sign
        w_u = parts.unembedding_matrix(model.spec, model.hf_model).float().cpu()  # (vocab, d_model)
        out_top, out_top_v, out_bot, out_bot_v = _top_bottom(model, w_u @ w_out, request.top_k)
        in_top, in_top_v, in_bot, in_bot_v = _top_bottom(model, w_u @ w_in, request.top_k)

    def gate(c):
        return float(c[request.neuron]) if c is not None else float("nan")

    return NeuronVocabResult(
        model_name=model.name,
        layer=request.layer,
        neuron=request.neuron,
        class_name=neurons.CLASS_NAMES[int(cosines.class_ids[request.neuron])],
        cos_in_out=float(cosines.cos_in_out[request.neuron]),
        cos_gate_out=gate(cosines.cos_gate_out),
        cos_gate_in=gate(cosines.cos_gate_in),
        flipped=flipped,
        out_top_tokens=out_top, out_top_values=out_top_v,
        out_bottom_tokens=out_bot, out_bottom_values=out_bot_v,
        in_top_tokens=in_top, in_top_values=in_top_v,
        in_bottom_tokens=in_bot, in_bottom_values=in_bot_v,
    )


def search_by_token(model: LoadedModel, token_id: int, fold_norm: bool = False, limit: int = 20):
    """(layer, neuron, cosine) of the neurons whose sign-normalised ``w_out`` is most aligned with
    the unembedding row of ``token_id``, over all layers, best first."""
    with torch.no_grad():
        target = parts.unembedding_matrix(model.spec, model.hf_model)[token_id].float().cpu()
        target = target / target.norm().clamp_min(1e-30)
        scores = []
        for layer in range(model.info.n_layers):
            weights = neurons.layer_weights(model, layer, fold_norm)
            w_out = weights.w_out
            if weights.w_gate is not None:
                _, w_out, _ = neurons.sign_normalise(weights.w_gate, weights.w_in, w_out)
            scores.append((w_out @ target) / w_out.norm(dim=-1).clamp_min(1e-30))
        scores = torch.stack(scores)  # (block, neuron)
        best = scores.flatten().topk(min(limit, scores.numel()))
    n_neurons = scores.shape[1]
    return [(int(i) // n_neurons, int(i) % n_neurons, float(v)) for v, i in zip(best.values, best.indices, strict=True)]


def run(ctx, request: NeuronVocabRequest, progress) -> NeuronVocabResult:
    """One neuron's cosines, class and the top tokens of W_U . w_out and W_U . w_in."""
    return compute(ctx.model, request)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="One neuron's vocabulary projection", Request=NeuronVocabRequest,
    Result=NeuronVocabResult, run=run,
)
