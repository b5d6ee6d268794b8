"""Causal check of one MLP neuron: ablate or amplify it and watch the next-token distribution.

Complements the weight-based classes of Gerstner & Schütze (2025), "Understanding Gated
Neurons in Transformers from Their Input-Output Functionality": an enrichment or depletion
neuron should change the output when its activation is scaled.

The neuron's activation (the input of the MLP's output projection at its index) is
multiplied by ``factor`` at every position of the prompt (0 ablates, 2 doubles, -1 flips).
Reported at the last position: the clean top-k tokens with their clean and scaled
probabilities, the scaled run's top-k, and ``KL(p_clean || p_scaled)`` in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import prompts, tracing
from workbench.analyses.base import Analysis
from workbench.analyses.neuron_vocab import check_neuron
from workbench.errors import BadRequest
from workbench.lenses import kl_divergence
from workbench.models.loader import LoadedModel

NAME = "neuron_effect"
VERSION = 2  # 2: byte tokens shown as <0x..>
MAX_TOP_K = 20
MAX_FACTOR = 100.0


@dataclass(frozen=True)
class NeuronEffectRequest:
    prompt: str
    layer: int
    neuron: int
    factor: float = 0.0  # 0 ablates; >1 amplifies
    top_k: int = 5

    def __post_init__(self):
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}.")
        if not -MAX_FACTOR <= float(self.factor) <= MAX_FACTOR:
            raise BadRequest(f"factor must be between {-MAX_FACTOR} and {MAX_FACTOR}, got {self.factor}.")


@dataclass(frozen=True, eq=False)
class NeuronEffectResult:
    model_name: str
    layer: int
    neuron: int
    factor: float
    tokens: np.ndarray  # (seq,) str: the prompt tokens
    activation: np.ndarray  # (seq,) float32: the neuron's clean activation at each position
    clean_top_tokens: np.ndarray  # (k,) str: top-k of the clean run
    clean_top_probs: np.ndarray  # (k,) float64: their clean probabilities
    clean_top_scaled_probs: np.ndarray  # (k,) float64: the same tokens' probabilities when scaled
    scaled_top_tokens: np.ndarray  # (k,) str: top-k of the scaled run
    scaled_top_probs: np.ndarray  # (k,) float64
    kl: float  # KL(p_clean || p_scaled), nats

    def __post_init__(self):
        if self.activation.shape != self.tokens.shape:
            raise ValueError("NeuronEffectResult.activation must be (seq,) like tokens")
        k = self.clean_top_tokens.shape
        for name in ("clean_top_probs", "clean_top_scaled_probs", "scaled_top_tokens", "scaled_top_probs"):
            if getattr(self, name).shape != k:
                raise ValueError(f"NeuronEffectResult.{name} has shape {getattr(self, name).shape}, expected {k}")



def compute(
    model: LoadedModel, tokens: tuple[str, ...], ids: torch.Tensor, request: NeuronEffectRequest
) -> NeuronEffectResult:
    clean = tracing.scale_neuron(model, ids, request.layer, request.neuron, 1.0)
    scaled = tracing.scale_neuron(model, ids, request.layer, request.neuron, float(request.factor))
    log_clean = torch.log_softmax(clean.logits.double(), -1)
    log_scaled = torch.log_softmax(scaled.logits.double(), -1)
    k = request.top_k
    clean_top, scaled_top = log_clean.topk(k), log_scaled.topk(k)
    def decode(ids_):
        return np.array(prompts.token_strings(model, ids_))

    return NeuronEffectResult(
        model_name=model.name,
        layer=request.layer,
        neuron=request.neuron,
        factor=float(request.factor),
        tokens=np.array(tokens),
        activation=clean.activation.numpy().astype(np.float32),
        clean_top_tokens=decode(clean_top.indices),
        clean_top_probs=clean_top.values.exp().numpy(),
        clean_top_scaled_probs=log_scaled[clean_top.indices].exp().numpy(),
        scaled_top_tokens=decode(scaled_top.indices),
        scaled_top_probs=scaled_top.values.exp().numpy(),
        kl=float(kl_divergence(log_clean, log_scaled)),
    )


def check(request: NeuronEffectRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: NeuronEffectRequest, progress) -> NeuronEffectResult:
    """Next-token change when one neuron's activation is scaled (0 = ablation)."""
    model = ctx.model
    check_neuron(model, request.layer, request.neuron)
    encoded = ctx.encode(request.prompt)
    progress(None, "Running the model with the neuron scaled")
    return compute(model, encoded.tokens, encoded.ids, request)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="One neuron scaled", Request=NeuronEffectRequest, Result=NeuronEffectResult,
    run=run, check=check,
)
