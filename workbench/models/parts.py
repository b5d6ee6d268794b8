"""A loaded model's parts by role, in one orientation, whatever the module types.

Owns reading weights through an ``ArchitectureSpec`` (the adapter names the modules; this reads
them): each block's MLP weights as (neuron, d_model) matrices (nn.Linear keeps (out, in), GPT-2's
Conv1D keeps (in, out); a fused gate/up projection, Phi-3's ``gate_up_proj``, is split into its
gate and up halves), the scales of the norms around the MLP, the unembedding matrix, and,
inside a trace, the MLP output projection whose input is the neuron activations; and, for an
encoder-decoder row (``EncoderDecoderSpec``), decoding a decoder state into logits as the model does. Neuron
analyses read weights, not activations, through here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.models.adapter import ArchitectureSpec, EncoderDecoderSpec

# Neuron analyses read weights, not activations: these helpers hand them over in one
# orientation, every matrix (neurons, d_model), whatever the module type (nn.Linear keeps
# (out, in), GPT-2's Conv1D keeps (in, out)).


@dataclass(frozen=True)
class MlpWeights:
    """One block's MLP weights, one row per neuron, all (neurons, d_model)."""

    w_gate: torch.Tensor | None  # gate projection rows; None for non-gated MLPs
    w_in: torch.Tensor  # input (up / fc) projection rows
    w_out: torch.Tensor  # output (down / proj) projection columns, as rows


def _block(spec: ArchitectureSpec, hf_model: torch.nn.Module, layer: int) -> torch.nn.Module:
    return hf_model.get_submodule(spec.layers)[layer]


def _input_rows(module: torch.nn.Module) -> torch.Tensor:
    """(neurons, d_model) rows of a projection that reads the residual stream."""
    weight = module.weight.detach()
    return weight if isinstance(module, torch.nn.Linear) else weight.T


def _output_rows(module: torch.nn.Module) -> torch.Tensor:
    """(neurons, d_model) rows of a projection that writes the residual stream."""
    weight = module.weight.detach()
    return weight.T if isinstance(module, torch.nn.Linear) else weight


def mlp_weights(spec: ArchitectureSpec, hf_model: torch.nn.Module, layer: int) -> MlpWeights:
    """The gate / in / out weights of block ``layer``'s MLP as (neurons, d_model) matrices (views:
    writing into them writes the model's weights, fused projections included)."""
    mlp = _block(spec, hf_model, layer).get_submodule(spec.mlp)
    w_out = _output_rows(mlp.get_submodule(spec.mlp_out))
    if spec.mlp_fused_gate_up:  # rows [gate; up]: act(gate) * up, as Phi-3's MLP chunks them
        fused = _input_rows(mlp.get_submodule(spec.mlp_in))
        neurons = w_out.shape[0]
        if fused.shape[0] != 2 * neurons:
            raise ValueError(f"fused gate/up projection has {fused.shape[0]} rows, expected 2 x {neurons} neurons")
        return MlpWeights(w_gate=fused[:neurons], w_in=fused[neurons:], w_out=w_out)
    gate = _input_rows(mlp.get_submodule(spec.mlp_gate)) if spec.mlp_gate else None
    return MlpWeights(w_gate=gate, w_in=_input_rows(mlp.get_submodule(spec.mlp_in)), w_out=w_out)


def mlp_norm_scales(
    spec: ArchitectureSpec, hf_model: torch.nn.Module, layer: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d_model,) multiplicative scales of the norm before and the norm after block ``layer``'s MLP.

    ``None`` where the architecture has no such norm (OLMo 2's MLP reads the residual un-normalised:
    no norm before it). The scale is ``offset + weight``
    (Gemma's RMSNorm multiplies by ``1 + weight``); biases and the normalisation itself are
    not included: these are what folding the norm into the MLP weights multiplies by.
    """
    block = _block(spec, hf_model, layer)

    def scale(path: str | None) -> torch.Tensor | None:
        if path is None:
            return None
        return block.get_submodule(path).weight.detach().float() + spec.norm_weight_offset

    return scale(spec.pre_mlp_norm), scale(spec.mlp_post_norm)


def unembedding_matrix(spec: ArchitectureSpec, hf_model: torch.nn.Module) -> torch.Tensor:
    """(vocab, d_model) unembedding W_U (the lm_head weight)."""
    return hf_model.get_submodule(spec.unembed).weight.detach()


def mlp_out_envoy(spec: ArchitectureSpec, mlp_envoy):
    """Inside a trace: the MLP's output projection, whose ``.input`` is the neuron activations."""
    return getattr(mlp_envoy, spec.mlp_out)


def decode_decoder(spec: EncoderDecoderSpec, hf_model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """(..., d_model) decoder states (a decoder block's output) -> (..., vocab) logits, as the model
    decodes its last decoder block's output."""
    if spec.decoder.final_norm:
        hidden = hf_model.get_submodule(spec.decoder.final_norm)(hidden)
    config = hf_model.config
    if spec.tied_output_scale and getattr(config, "tie_word_embeddings", False):
        hidden = hidden * getattr(config, spec.d_model_attr) ** -0.5
    logits = hf_model.get_submodule(spec.unembed)(hidden)
    if spec.logit_bias:
        logits = logits + getattr(hf_model, spec.logit_bias).to(logits.device)
    return logits
