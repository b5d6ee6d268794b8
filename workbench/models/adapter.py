"""The one place that knows architecture-specific module names and config field names.

Owns the declarative table that maps each supported architecture (Llama/SmolLM, Mistral,
Qwen2/3, Gemma 2/3, OLMo 2, Phi-3, GPT-2, GPT-NeoX/Pythia, Phi, GPT-J) onto one vocabulary
used everywhere else:

    embed       token embedding module
    layers      the list of transformer blocks (``layers[l]`` is block ``l``)
    attn        attention module inside a block
    mlp         MLP module inside a block
    final_norm  the norm applied before the unembedding
    unembed     the unembedding (``lm_head``)

plus the names of the MLP projections (gate/in/out) and the norms inside a
block, which later analyses (neurons, RelP) need, the block's residual topology,
and where the HF config keeps each size (``config_names``, read by role with
``config_value``). Nothing outside this module spells ``model.layers``,
``transformer.h``, ``hidden_size`` or ``n_embd``. Adding an architecture means
adding one ``ArchitectureSpec`` row below, nothing else.

Residual topology (``ArchitectureSpec.residual``), what analyses may assume:

``"sequential"`` (Llama, Mistral, Qwen, Gemma 2/3, OLMo 2, Phi-3, GPT-2; GPT-NeoX
with ``use_parallel_residual=False``)
    ``mid = x + attn(norm_1(x))``, then ``out = mid + mlp(pre_mlp_norm(mid))``.
    A "resid_mid" state between the two sublayers exists: it is the input of the
    block's ``pre_mlp_norm`` (renamed ``pre_mlp_norm`` in traces), attention's
    contribution is ``mid - x`` and the MLP's is ``out - mid``. The MLP reads a
    residual that already contains this block's attention output. OLMo 2 has no
    norm before its MLP (``pre_mlp_norm=None``: its norms come AFTER each
    sublayer, ``mid = x + norm(attn(x))``): resid_mid is then the MLP's own input
    (``resid_mid_envoy``), and the MLP reads the un-normalised residual.

``"parallel"`` (GPT-NeoX / Pythia with ``use_parallel_residual``, Phi, GPT-J)
    ``out = x + attn(norm_1(x)) + mlp(pre_mlp_norm(x))``: both sublayers read the
    block input ``x`` (Phi and GPT-J share one norm: ``pre_mlp_norm`` is
    ``norm_1``). There is NO resid_mid: the input of ``pre_mlp_norm`` is
    the block input, so reading it as "the residual after attention" would
    silently attribute nothing to attention. ``rename_table()`` therefore leaves
    the ``pre_mlp_norm`` alias out for parallel specs (such a read fails loudly),
    and code that needs resid_mid calls ``require_sequential``. What holds in
    both topologies: block input and output (the residual slots), attention and
    MLP outputs as separate contributions (``out - x`` is their sum), the MLP's
    neurons and weights (``mlp_weights``, ``mlp_norm_scales``: ``pre_mlp_norm``
    is the norm whose output the MLP reads), the final norm and unembedding.
    Where a family's topology is a config switch (GPT-NeoX), ``spec_for_config``
    reads it (``parallel_attr``).

Other per-family facts a row declares: a fused gate/up projection (Phi-3: ``mlp_fused_gate_up``,
split by ``parts.mlp_weights``), an attention core that bypasses transformers' AttentionInterface
(GPT-J: ``attn_core``, which the RelP AH rule wraps), the final logit soft-cap (Gemma 2/3) and
norm weight offsets (Gemma).

Encoder-decoder models (T5, BART) get an ``EncoderDecoderSpec`` row in ``ENCODER_DECODER_ARCHITECTURES``
instead: where their encoder and decoder stacks, cross-attention, final norms and unembedding are
(``parts.decode_decoder`` turns a decoder state into the model's logits), for encoder-decoder lenses such as
the DecoderLens. Every analysis the workbench runs today reads one decoder-only residual stream, so
loading such a model for them stops with ``UnsupportedArchitecture`` saying so (``spec_for_model_type``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from workbench.errors import UnsupportedArchitecture

RESIDUAL_TOPOLOGIES = ("sequential", "parallel")

# Config roles: what ``config_value`` can read, with what each means. Required roles must be named
# by every spec; an optional role may name nothing, and an absent field then gives its fallback.
CONFIG_ROLES: Mapping[str, str] = MappingProxyType({
    "d_model": "the residual stream width",
    "n_layers": "the number of blocks",
    "n_heads": "the number of attention (query) heads",
    "n_kv_heads": "the number of key/value heads (grouped-query attention)",
    "vocab_size": "the vocabulary size",
    "max_positions": "the longest sequence the position encoding covers",
    "tied_embeddings": "whether the unembedding shares the embedding matrix",
})
_FALLBACK_ROLE = {"n_kv_heads": "n_heads"}  # absent: no grouped-query attention, one KV head per head
_DEFAULTS: Mapping[str, Any] = {"max_positions": None, "tied_embeddings": False}
_OPTIONAL_ROLES = frozenset(_FALLBACK_ROLE) | frozenset(_DEFAULTS)

# The HF config names of the Llama-like families (Llama, Mistral, Qwen2/3, Gemma 3), role -> names
# tried in order (the first one present wins).
LLAMA_CONFIG_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "d_model": ("hidden_size",),
    "n_layers": ("num_hidden_layers",),
    "n_heads": ("num_attention_heads",),
    "n_kv_heads": ("num_key_value_heads",),
    "vocab_size": ("vocab_size",),
    "max_positions": ("max_position_embeddings",),
    "tied_embeddings": ("tie_word_embeddings",),
})


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where one architecture family keeps its parts (paths relative to the HF model) and its sizes."""

    family: str
    model_types: tuple[str, ...]
    residual: str  # "sequential" or "parallel": see the module docstring for what each lets analyses assume
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
    # The block norm whose output the MLP reads; in a sequential block its input is "resid_mid",
    # the residual after attention (in a parallel block it reads the block input). None: the MLP
    # reads the residual itself, un-normalised (OLMo 2, whose norms follow the sublayers).
    pre_mlp_norm: str | None
    # role (CONFIG_ROLES) -> config attribute names, tried in order; read with ``config_value``
    config_names: Mapping[str, tuple[str, ...]] = field(hash=False)
    # attribute of a multimodal config holding the text model's config: read instead of the top level
    # when the config has it; None: always the top level
    config_section: str | None = "text_config"
    logit_softcap_attr: str | None = None  # config attribute holding a final logit soft-cap
    mlp_post_norm: str | None = None  # block norm applied to the MLP output before the residual add
    norm_weight_offset: float = 0.0  # a norm multiplies by (offset + weight): Gemma uses 1 + weight
    mlp_act: str = "act_fn"  # relative to the mlp: the elementwise activation module (RelP identity rule)
    attn_out: str = "o_proj"  # relative to the attn: output projection, its input is the per-head outputs
    # mlp_in's output is [gate; up] along the neuron axis (Phi-3's gate_up_proj): the first half of
    # its rows is the gate, the second the up projection (``parts.mlp_weights`` splits them)
    mlp_fused_gate_up: bool = False
    # A method of the attention module, ``(query, key, value, mask) -> (out, probs)``, that computes
    # the attention itself instead of going through transformers' AttentionInterface (GPT-J's
    # ``_attn``): the RelP AH rule wraps it, as switching the implementation cannot reach it.
    attn_core: str | None = None
    # Boolean config attribute that makes blocks parallel when true, sequential when false
    # (GPT-NeoX's use_parallel_residual); ``residual`` is the topology when the attribute is absent.
    parallel_attr: str | None = None
    # The block norm whose output the attention reads (None: the attention reads the raw residual,
    # OLMo 2), and the norm applied to the attention output before the residual add (Gemma 2/3, OLMo 2);
    # circuit runs (``circuit_runs``) re-apply the first to each head's own input and split the second
    # into per-head shares.
    attn_norm: str | None = "input_layernorm"
    attn_post_norm: str | None = None

    def __post_init__(self) -> None:
        row = f"The ArchitectureSpec row '{self.family}' in workbench/models/adapter.py"
        if self.residual not in RESIDUAL_TOPOLOGIES:
            raise UnsupportedArchitecture(
                f"{row} has residual={self.residual!r}; it must be one of "
                f"{', '.join(map(repr, RESIDUAL_TOPOLOGIES))} (attention then MLP, or both reading the block input)."
            )
        unknown = sorted(set(self.config_names) - set(CONFIG_ROLES))
        if unknown:
            raise UnsupportedArchitecture(
                f"{row} has unknown config roles {', '.join(unknown)} in config_names "
                f"(known: {', '.join(CONFIG_ROLES)})."
            )
        unnamed = [role for role in CONFIG_ROLES if role not in _OPTIONAL_ROLES and not self.config_names.get(role)]
        if unnamed:
            raise UnsupportedArchitecture(f"{row} has no config field names for {', '.join(unnamed)}.")
        if self.pre_mlp_norm is None and self.residual == "parallel":
            raise UnsupportedArchitecture(f"{row} is parallel but names no pre_mlp_norm (the norm the MLP reads).")
        if self.mlp_fused_gate_up and self.mlp_gate != self.mlp_in:
            raise UnsupportedArchitecture(
                f"{row} fuses gate and up projections (mlp_fused_gate_up): mlp_gate and mlp_in must name "
                "the same module."
            )
        object.__setattr__(self, "config_names", MappingProxyType(dict(self.config_names)))

    @property
    def gated(self) -> bool:
        return self.mlp_gate is not None

    @property
    def sequential(self) -> bool:
        """Attention then MLP: a residual state between them ("resid_mid") exists."""
        return self.residual == "sequential"

    @property
    def parallel(self) -> bool:
        """Attention and MLP both read the block input; no resid_mid."""
        return self.residual == "parallel"

    def require_sequential(self, what: str) -> None:
        """Raise UnsupportedArchitecture unless blocks are sequential (``what`` needs resid_mid)."""
        if not self.sequential:
            raise UnsupportedArchitecture(
                f"{what} needs the residual between attention and MLP (resid_mid), which '{self.family}' "
                f"blocks do not have: their residual is {self.residual} (attention and MLP both read the "
                "block input)."
            )

    def rename_table(self) -> dict[str, str]:
        """nnsight ``rename=`` mapping from real module paths to the shared vocabulary.

        ``pre_mlp_norm`` (whose input is read as resid_mid) is aliased for sequential blocks only.
        """
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
        if self.sequential and self.pre_mlp_norm is not None:
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
        for norm in {*self.block_norms, self.pre_mlp_norm, self.attn_norm, self.attn_post_norm} - {None}:
            paths[f"norm:{norm}"] = f"{block}.{norm}"
        if self.attn_core:
            paths["attn_core"] = f"{block}.{self.attn}.{self.attn_core}"
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
    config_names=LLAMA_CONFIG_NAMES,
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        residual="sequential",
        block_norms=("input_layernorm", "post_attention_layernorm"),
        pre_mlp_norm="post_attention_layernorm",
        **_LLAMA_LIKE,
    ),
    ArchitectureSpec(
        family="gemma3",
        model_types=("gemma3_text", "gemma3"),
        residual="sequential",
        block_norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ),
        pre_mlp_norm="pre_feedforward_layernorm",
        logit_softcap_attr="final_logit_softcapping",
        mlp_post_norm="post_feedforward_layernorm",
        attn_post_norm="post_attention_layernorm",
        norm_weight_offset=1.0,
        **_LLAMA_LIKE,
    ),
    ArchitectureSpec(
        family="gpt2",
        model_types=("gpt2",),
        residual="sequential",
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
        config_names={
            "d_model": ("n_embd",),
            "n_layers": ("n_layer",),
            "n_heads": ("n_head",),
            "n_kv_heads": (),  # no grouped-query attention: as many KV heads as heads
            "vocab_size": ("vocab_size",),
            "max_positions": ("n_positions",),
            "tied_embeddings": ("tie_word_embeddings",),
        },
        mlp_act="act",
        attn_out="c_proj",
        attn_norm="ln_1",
    ),
    ArchitectureSpec(
        family="gemma2",
        model_types=("gemma2",),
        residual="sequential",
        block_norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ),
        pre_mlp_norm="pre_feedforward_layernorm",
        logit_softcap_attr="final_logit_softcapping",
        mlp_post_norm="post_feedforward_layernorm",
        attn_post_norm="post_attention_layernorm",
        norm_weight_offset=1.0,
        **_LLAMA_LIKE,
    ),
    ArchitectureSpec(
        # norms AFTER each sublayer: mid = x + norm(attn(x)), out = mid + norm(mlp(mid)); the MLP reads
        # the raw residual (no pre_mlp_norm), the residual stream itself is never normalised in a block
        family="olmo2",
        model_types=("olmo2",),
        residual="sequential",
        block_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
        pre_mlp_norm=None,
        mlp_post_norm="post_feedforward_layernorm",
        attn_norm=None,
        attn_post_norm="post_attention_layernorm",
        **_LLAMA_LIKE,
    ),
    ArchitectureSpec(
        family="phi3",
        model_types=("phi3",),
        residual="sequential",
        embed="model.embed_tokens",
        layers="model.layers",
        final_norm="model.norm",
        unembed="lm_head",
        attn="self_attn",
        mlp="mlp",
        mlp_in="gate_up_proj",
        mlp_out="down_proj",
        mlp_gate="gate_up_proj",
        mlp_fused_gate_up=True,
        block_norms=("input_layernorm", "post_attention_layernorm"),
        pre_mlp_norm="post_attention_layernorm",
        config_names=LLAMA_CONFIG_NAMES,
        mlp_act="activation_fn",
    ),
    ArchitectureSpec(
        # GPT-NeoX / Pythia: attention and MLP both read the block input, each through its own norm
        # (sequential when a config sets use_parallel_residual=False); partial rotary embeddings
        family="gpt_neox",
        model_types=("gpt_neox",),
        residual="parallel",
        parallel_attr="use_parallel_residual",
        embed="gpt_neox.embed_in",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        attn="attention",
        mlp="mlp",
        mlp_in="dense_h_to_4h",
        mlp_out="dense_4h_to_h",
        mlp_gate=None,
        block_norms=("input_layernorm", "post_attention_layernorm"),
        pre_mlp_norm="post_attention_layernorm",
        config_names=LLAMA_CONFIG_NAMES,
        mlp_act="act",
        attn_out="dense",
    ),
    ArchitectureSpec(
        # Phi (1, 1.5, 2): parallel block with ONE layernorm shared by attention and MLP
        family="phi",
        model_types=("phi",),
        residual="parallel",
        embed="model.embed_tokens",
        layers="model.layers",
        final_norm="model.final_layernorm",
        unembed="lm_head",
        attn="self_attn",
        mlp="mlp",
        mlp_in="fc1",
        mlp_out="fc2",
        mlp_gate=None,
        block_norms=("input_layernorm",),
        pre_mlp_norm="input_layernorm",
        config_names=LLAMA_CONFIG_NAMES,
        mlp_act="activation_fn",
        attn_out="dense",
    ),
    ArchitectureSpec(
        # GPT-J: parallel block with one shared layernorm; its attention computes probabilities in
        # its own ``_attn`` (no AttentionInterface)
        family="gptj",
        model_types=("gptj",),
        residual="parallel",
        embed="transformer.wte",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        mlp="mlp",
        mlp_in="fc_in",
        mlp_out="fc_out",
        mlp_gate=None,
        block_norms=("ln_1",),
        pre_mlp_norm="ln_1",
        config_names={
            "d_model": ("n_embd",),
            "n_layers": ("n_layer",),
            "n_heads": ("n_head",),
            "n_kv_heads": (),
            "vocab_size": ("vocab_size",),
            "max_positions": ("n_positions",),
            "tied_embeddings": ("tie_word_embeddings",),
        },
        mlp_act="act",
        attn_out="out_proj",
        attn_core="_attn",
        attn_norm="ln_1",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


# ---------------------------------------------------------------------- encoder-decoder models


@dataclass(frozen=True)
class StackSpec:
    """One stack of an encoder-decoder model, paths relative to the HF model (blocks: to a block)."""

    embed: str
    layers: str
    final_norm: str | None  # after the last block; None: post-norm blocks end normalised (BART)
    self_attn: str
    mlp_out: str  # the projection that writes the feed-forward output
    cross_attn: str | None = None  # decoder blocks: attention over the encoder output

    def required_paths(self, stack: str) -> dict[str, str]:
        block = f"{self.layers}.0"
        paths = {f"{stack}.embed": self.embed, f"{stack}.layers": self.layers,
                 f"{stack}.self_attn": f"{block}.{self.self_attn}", f"{stack}.mlp_out": f"{block}.{self.mlp_out}"}
        if self.final_norm:
            paths[f"{stack}.final_norm"] = self.final_norm
        if self.cross_attn:
            paths[f"{stack}.cross_attn"] = f"{block}.{self.cross_attn}"
        return paths


@dataclass(frozen=True)
class EncoderDecoderSpec:
    """Where an encoder-decoder family keeps its two stacks and its unembedding.

    Decoding a decoder state ``h`` (``parts.decode_decoder``): ``unembed(scale * final_norm(h)) + logit_bias``,
    with ``scale = d_model ** -0.5`` where ``tied_output_scale`` and the embeddings are tied (T5)."""

    family: str
    model_types: tuple[str, ...]
    encoder: StackSpec
    decoder: StackSpec
    unembed: str
    d_model_attr: str
    logit_bias: str | None = None  # a (1, vocab) buffer added to the logits (BART's final_logits_bias)
    tied_output_scale: bool = False

    def required_paths(self) -> dict[str, str]:
        return {**self.encoder.required_paths("encoder"), **self.decoder.required_paths("decoder"),
                "unembed": self.unembed}


ENCODER_DECODER_ARCHITECTURES: tuple[EncoderDecoderSpec, ...] = (
    EncoderDecoderSpec(
        family="t5",
        model_types=("t5", "mt5", "umt5"),
        encoder=StackSpec(embed="encoder.embed_tokens", layers="encoder.block", final_norm="encoder.final_layer_norm",
                          self_attn="layer.0.SelfAttention", mlp_out="layer.1.DenseReluDense.wo"),
        decoder=StackSpec(embed="decoder.embed_tokens", layers="decoder.block", final_norm="decoder.final_layer_norm",
                          self_attn="layer.0.SelfAttention", mlp_out="layer.2.DenseReluDense.wo",
                          cross_attn="layer.1.EncDecAttention"),
        unembed="lm_head",
        d_model_attr="d_model",
        tied_output_scale=True,
    ),
    EncoderDecoderSpec(
        family="bart",
        model_types=("bart",),
        encoder=StackSpec(embed="model.encoder.embed_tokens", layers="model.encoder.layers", final_norm=None,
                          self_attn="self_attn", mlp_out="fc2"),
        decoder=StackSpec(embed="model.decoder.embed_tokens", layers="model.decoder.layers", final_norm=None,
                          self_attn="self_attn", mlp_out="fc2", cross_attn="encoder_attn"),
        unembed="lm_head",
        d_model_attr="d_model",
        logit_bias="final_logits_bias",
    ),
)
# Encoder-decoder model types refused by every decoder-only analysis (those with a row, and others).
ENCODER_DECODER = (*(t for spec in ENCODER_DECODER_ARCHITECTURES for t in spec.model_types),
                   "mbart", "pegasus", "marian", "led")


def encoder_decoder_spec(model_type: str) -> EncoderDecoderSpec:
    """The encoder-decoder row for ``model_type``; a clear error if there is none."""
    for spec in ENCODER_DECODER_ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for spec in ENCODER_DECODER_ARCHITECTURES for t in spec.model_types)
    raise UnsupportedArchitecture(
        f"'{model_type}' has no encoder-decoder row (known: {', '.join(known)}). Add an EncoderDecoderSpec row "
        "to ENCODER_DECODER_ARCHITECTURES in workbench/models/adapter.py naming its two stacks and unembedding."
    )


def validate_encoder_decoder(spec: EncoderDecoderSpec, hf_model: torch.nn.Module, model_type: str) -> None:
    """Raise UnsupportedArchitecture naming every module the encoder-decoder row expects but the model lacks."""
    missing = [f"{role} ({path})" for role, path in spec.required_paths().items() if not _has_path(hf_model, path)]
    if spec.logit_bias and not hasattr(hf_model, spec.logit_bias):
        missing.append(f"logit_bias ({spec.logit_bias})")
    if missing:
        raise UnsupportedArchitecture(
            f"Model type '{model_type}' was mapped to the '{spec.family}' encoder-decoder row, but these modules "
            f"are missing: {', '.join(missing)}. Fix its EncoderDecoderSpec in workbench/models/adapter.py."
        )


def spec_for_model_type(model_type: str) -> ArchitectureSpec:
    """The spec for a HF ``config.model_type``; a clear error if there is none."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    if model_type in ENCODER_DECODER:
        raise UnsupportedArchitecture(
            f"'{model_type}' is an encoder-decoder model; every LayerLens analysis reads the residual stream "
            "of one decoder-only stack (logit lens, patching, sinks, neurons, ...), so it is refused rather "
            f"than analysed half-way. Supported (decoder-only) model types: {', '.join(supported_model_types())}."
        )
    raise UnsupportedArchitecture(
        f"Architecture '{model_type}' is not supported yet (supported model types: "
        f"{', '.join(supported_model_types())}). What is missing is its ArchitectureSpec row: add one to "
        "ARCHITECTURES in workbench/models/adapter.py (the one file to edit) naming its embedding, "
        "blocks, attention, MLP projections, norms, final norm, unembedding, residual topology "
        "(sequential or parallel) and the config fields of its sizes."
    )


def spec_for_config(config: object) -> ArchitectureSpec:
    """The spec for a HF config: its model type's row, with the residual topology the config selects
    where the family makes it a switch (``parallel_attr``, e.g. GPT-NeoX's use_parallel_residual)."""
    spec = spec_for_model_type(getattr(config, "model_type", None) or "unknown")
    if spec.parallel_attr is None:
        return spec
    flag = getattr(config_section(spec, config), spec.parallel_attr, None)
    if flag is None:
        return spec
    residual = "parallel" if flag else "sequential"
    if residual == spec.residual:
        return spec
    return replace(spec, residual=residual)


def config_section(spec: ArchitectureSpec, config: object) -> object:
    """The part of ``config`` that holds the text model's fields: ``text_config`` of a multimodal
    config (as the spec names it), else the config itself."""
    section = getattr(config, spec.config_section, None) if spec.config_section else None
    return section or config


def config_value(spec: ArchitectureSpec, config: object, role: str) -> Any:
    """The value of ``role`` (a key of ``CONFIG_ROLES``: ``"d_model"``, ``"n_heads"``, ...) in a HF config.

    Tries the spec's names for the role in order, in ``config_section``; the first field that is
    present and not None wins. An absent optional role gives its fallback (``n_kv_heads``: the head
    count; ``max_positions``: None; ``tied_embeddings``: False); an absent required one raises
    ``UnsupportedArchitecture`` naming the field and the file to edit.
    """
    if role not in CONFIG_ROLES:
        raise ValueError(f"Unknown config role {role!r}; known roles: {', '.join(CONFIG_ROLES)}.")
    section = config_section(spec, config)
    names = spec.config_names.get(role, ())
    for name in names:
        value = getattr(section, name, None)
        if value is not None:
            return value
    if role in _FALLBACK_ROLE:
        return config_value(spec, config, _FALLBACK_ROLE[role])
    if role in _DEFAULTS:
        return _DEFAULTS[role]
    model_type = getattr(config, "model_type", None) or "unknown"
    where = f"config.{spec.config_section}" if section is not config else "config"
    raise UnsupportedArchitecture(
        f"The '{model_type}' config has no {' or '.join(names)} ({where}), which the '{spec.family}' family "
        f"reads for {role} ({CONFIG_ROLES[role]}). If this model names it differently, add that name to "
        f"config_names['{role}'] of its ArchitectureSpec row in workbench/models/adapter.py."
    )


def _has_path(module: torch.nn.Module, path: str) -> bool:
    """Whether ``path`` names a submodule, or a method of one (``attn_core``)."""
    try:
        module.get_submodule(path)
    except AttributeError:
        parent, _, name = path.rpartition(".")
        try:
            owner = module.get_submodule(parent) if parent else module
        except AttributeError:
            return False
        return callable(getattr(owner, name, None)) and not isinstance(getattr(owner, name), torch.nn.Module)
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
