"""The one place that knows architecture-specific module names.

Owns the declarative table that maps each supported architecture (Llama/SmolLM,
Gemma 3, GPT-2, Qwen2/3, Mistral) onto one vocabulary used everywhere else:

    embed       token embedding module
    layers      the list of transformer blocks (``layers[l]`` is block ``l``)
    attn        attention module inside a block
    mlp         MLP module inside a block
    final_norm  the norm applied before the unembedding
    unembed     the unembedding (``lm_head``)

plus the names of the MLP projections (gate/in/out) and the norms inside a
block, which later analyses (neurons, RelP) need. Nothing outside this module
spells ``model.layers`` or ``transformer.h``. Adding an architecture means adding
one ``ArchitectureSpec`` row below, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where one architecture family keeps its parts (paths relative to the HF model)."""

    family: str
    model_types: tuple[str, ...]
    embed: str
    layers: str
    final_norm: str
    unembed: str
    attn: str  # relative to a block
    mlp: str  # relative to a block
    mlp_in: str  # relative to the mlp: up / fc projection
    mlp_out: str  # relative to the mlp: down / output projection
    mlp_gate: str | None  # relative to the mlp; None for non-gated MLPs
    block_norms: tuple[str, ...]  # norms inside a block, in execution order
    pre_mlp_norm: str  # the block norm whose input is the residual after attention ("resid_mid")
    logit_softcap_attr: str | None = None  # config attribute holding a final logit soft-cap
    mlp_post_norm: str | None = None  # block norm applied to the MLP output before the residual add
    norm_weight_offset: float = 0.0  # a norm multiplies by (offset + weight): Gemma uses 1 + weight
    mlp_act: str = "act_fn"  # relative to the mlp: the elementwise activation module (RelP identity rule)
    attn_out: str = "o_proj"  # relative to the attn: output projection, its input is the per-head outputs

    @property
    def gated(self) -> bool:
        return self.mlp_gate is not None

    def rename_table(self) -> dict[str, str]:
        """nnsight ``rename=`` mapping from real module paths to the shared vocabulary."""
        table = {
            self.embed: "embed",
            self.layers: "layers",
            self.final_norm: "final_norm",
            self.unembed: "unembed",
        }
        if self.attn != "attn":
            table[self.attn] = "attn"
        if self.mlp != "mlp":
            table[self.mlp] = "mlp"
        table[self.pre_mlp_norm] = "pre_mlp_norm"
        return table

    def required_paths(self) -> dict[str, str]:
        """Every module path the workbench relies on, keyed by its role."""
        block = f"{self.layers}.0"
        paths = {
            "embed": self.embed,
            "layers": self.layers,
            "final_norm": self.final_norm,
            "unembed": self.unembed,
            "attn": f"{block}.{self.attn}",
            "mlp": f"{block}.{self.mlp}",
            "mlp_in": f"{block}.{self.mlp}.{self.mlp_in}",
            "mlp_out": f"{block}.{self.mlp}.{self.mlp_out}",
        }
        if self.mlp_gate:
            paths["mlp_gate"] = f"{block}.{self.mlp}.{self.mlp_gate}"
        for norm in {*self.block_norms, self.pre_mlp_norm}:
            paths[f"norm:{norm}"] = f"{block}.{norm}"
        return paths


_LLAMA_LIKE = dict(
    embed="model.embed_tokens",
    layers="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    mlp="mlp",
    mlp_in="up_proj",
    mlp_out="down_proj",
    mlp_gate="gate_proj",
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        block_norms=("input_layernorm", "post_attention_layernorm"),
        pre_mlp_norm="post_attention_layernorm",
        **_LLAMA_LIKE,
    ),
    ArchitectureSpec(
        family="gemma3",
        model_types=("gemma3_text", "gemma3"),
        block_norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ),
        pre_mlp_norm="pre_feedforward_layernorm",
        logit_softcap_attr="final_logit_softcapping",
        mlp_post_norm="post_feedforward_layernorm",
        norm_weight_offset=1.0,
        **_LLAMA_LIKE,
    ),
    ArchitectureSpec(
        family="gpt2",
        model_types=("gpt2",),
        embed="transformer.wte",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        mlp="mlp",
        mlp_in="c_fc",
        mlp_out="c_proj",
        mlp_gate=None,
        block_norms=("ln_1", "ln_2"),
        pre_mlp_norm="ln_2",
        mlp_act="act",
        attn_out="c_proj",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def spec_for_model_type(model_type: str) -> ArchitectureSpec:
    """The spec for a HF ``config.model_type``; a clear error if there is none."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitecture(
        f"Architecture '{model_type}' is not supported yet. Supported model types: "
        f"{', '.join(supported_model_types())}. To add one, add an ArchitectureSpec row "
        "to workbench/models/adapter.py naming its layers, attention, MLP and norms."
    )


def _has_path(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def validate(spec: ArchitectureSpec, hf_model: torch.nn.Module, model_type: str) -> None:
    """Raise UnsupportedArchitecture naming every module the spec expects but the model lacks."""
    missing = [
        f"{role} ({path})"
        for role, path in spec.required_paths().items()
        if not _has_path(hf_model, path)
    ]
    if missing:
        raise UnsupportedArchitecture(
            f"Model type '{model_type}' was mapped to the '{spec.family}' family, but these "
            f"modules are missing: {', '.join(missing)}. Fix its ArchitectureSpec in "
            "workbench/models/adapter.py."
        )


def logit_softcap(spec: ArchitectureSpec, config: object) -> float | None:
    """The final logit soft-cap this model's config sets (Gemma), else None."""
    cap = getattr(config, spec.logit_softcap_attr, None) if spec.logit_softcap_attr else None
    return float(cap) if cap else None


# ---------------------------------------------------------------------- MLP weights by role
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
    """The gate / in / out weights of block ``layer``'s MLP as (neurons, d_model) matrices (views)."""
    mlp = _block(spec, hf_model, layer).get_submodule(spec.mlp)
    gate = _input_rows(mlp.get_submodule(spec.mlp_gate)) if spec.mlp_gate else None
    return MlpWeights(
        w_gate=gate,
        w_in=_input_rows(mlp.get_submodule(spec.mlp_in)),
        w_out=_output_rows(mlp.get_submodule(spec.mlp_out)),
    )


def mlp_norm_scales(
    spec: ArchitectureSpec, hf_model: torch.nn.Module, layer: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d_model,) multiplicative scales of the norm before and the norm after block ``layer``'s MLP.

    ``None`` where the architecture has no such norm. The scale is ``offset + weight``
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
