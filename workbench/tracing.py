"""The module that opens nnsight traces for the analyses' generic reads (the circuit passes, which
widen the batch per head and take gradients inside the trace, open their own in ``circuit_trace``).

Owns running a model under nnsight and handing back plain tensors. Every trace
holds the model's lock, so Streamlit sessions sharing one model never run
traces concurrently (nnsight's greenlet-based tracing breaks under threads).

Generic reads only: residual slots, sublayer outputs, attention probabilities,
MLP neuron activations, last-token states, skipped blocks and scaled neurons.
What an analysis computes from them lives in the analysis (or ``workbench.lenses``);
reductions that must run inside the trace (so only small tensors leave it, here
or on NDIF) are passed in as functions (``reduce_slots``; ``reduce_slots_batch`` runs several
prompts of any lengths in one right-padded forward, for requests the runtime batches). Axes as in
``workbench.axes``: ``slot`` (L + 1), ``block`` (L), ``seq``, ``head``,
``neuron``, ``d_model``, ``vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import torch

from workbench import remote
from workbench.lenses import Unembed
from workbench.models import parts
from workbench.models.loader import LoadedModel


@dataclass(frozen=True)
class ResidualTrace:
    resid: torch.Tensor  # (slot, seq, d_model): block-0 input, then block outputs
    logits: torch.Tensor  # (seq, vocab): the model's own output logits


def _trace_options(model: LoadedModel) -> dict:
    """The one place that decides where a trace runs: every ``lm.trace`` passes these, so a model
    on NDIF (``model.remote``, see workbench.remote) runs the very same block remotely. Blocks
    read only plain locals (``n_layers``, ``spec``, tensors) and the model's envoys: a
    ``LoadedModel`` (it holds a lock) cannot be serialised into a remote request."""
    return remote.trace_options(model.remote)


def _first(value):
    """Decoder blocks return a tensor in transformers 5, a tuple in some architectures."""
    return value[0] if isinstance(value, tuple) else value


def residual_stream(model: LoadedModel, token_ids: torch.Tensor) -> ResidualTrace:
    """One forward pass recording the residual stream before block 0 and after every block."""
    if token_ids.ndim != 1:
        raise ValueError("token_ids must be one sequence, shape (seq,)")
    lm, n_layers = model.lm, model.info.n_layers
    with model.lock, torch.no_grad():
        with lm.trace(token_ids.unsqueeze(0).to(model.device), **_trace_options(model)):
            states = []
            states.append(_first(lm.layers[0].input))
            for layer in range(n_layers):
                states.append(_first(lm.layers[layer].output))
            logits = lm.output.logits
            nnsight.save(states)
            logits = nnsight.save(logits)
    resid = torch.stack([s[0].detach().float().cpu() for s in states])  # (slot, seq, d_model)
    return ResidualTrace(resid=resid, logits=logits[0].detach().float().cpu())


def reduce_slots(model: LoadedModel, token_ids: torch.Tensor, reduce, *args, last_only: bool = False):
    """One forward pass that hands every residual slot to ``reduce(unembed, states, *args)`` INSIDE
    the trace and brings back only what it returns (a tensor, or lists / dicts of tensors).

    ``states`` is the list of slot tensors (slot 0 = block-0 input, then every block's output),
    each (1, seq, d_model), or (1, d_model) with ``last_only``; ``unembed`` is the model's
    ``lenses.Unembed`` on its envoys. The reductions that decode (the logit lens's top-k and KL,
    the latent-language probabilities) are written in the lens or analysis module and run here,
    so a lens over all slots never materialises (slot, seq, vocab) outside the trace, and on NDIF
    only the reduced tensors travel back."""
    if token_ids.ndim != 1:
        raise ValueError("token_ids must be one sequence, shape (seq,)")
    lm, n_layers, cap = model.lm, model.info.n_layers, model.info.logit_softcap
    with model.lock, torch.no_grad():
        # the model's own logits are not needed (every slot is decoded by ``reduce``): keep one position's
        with lm.trace(token_ids.unsqueeze(0).to(model.device), logits_to_keep=1, **_trace_options(model)):
            states = [_first(lm.layers[0].input)]
            for layer in range(n_layers):
                states.append(_first(lm.layers[layer].output))
            if last_only:
                last = []
                for state in states:
                    last.append(state[:, -1])
                states = last
            reduced = nnsight.save(reduce(Unembed.in_trace(lm, cap), states, *args))
    return _detached(reduced)


def reduce_slots_batch(model: LoadedModel, sequences: list[list[int]], reduce, *args):
    """``reduce_slots`` for several sequences of any lengths in ONE forward pass: the rows are
    right-padded with an attention mask (``_right_padded``), so every row's positions stay
    0..len-1 (rotary models included) and, with causal attention, pads after a row's last token
    cannot reach its real tokens: each row's real positions equal its unbatched run.

    ``reduce(unembed, states, real, *args)`` runs INSIDE the trace; ``states`` is the list of slot
    tensors, each (row, seq_max, d_model), and ``real`` a (row, seq_max) bool tensor, True at real
    tokens. The states at padded positions are finite but meaningless: ``reduce`` must drop them
    (e.g. ``state[real]`` packs the real positions, row after row) so they never reach a result."""
    ids, mask, _lengths = _right_padded([[int(t) for t in seq] for seq in sequences])
    lm, n_layers, cap = model.lm, model.info.n_layers, model.info.logit_softcap
    real = mask.bool().to(model.device)
    with model.lock, torch.no_grad():
        with lm.trace({"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)},
                      logits_to_keep=1, **_trace_options(model)):
            states = [_first(lm.layers[0].input)]
            for layer in range(n_layers):
                states.append(_first(lm.layers[layer].output))
            reduced = nnsight.save(reduce(Unembed.in_trace(lm, cap), states, real, *args))
    return _detached(reduced)


def _detached(value):
    """Saved trace values on the CPU, outside autograd, keeping their list / dict structure."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(item) for item in value)
    return value


def forward_logits(model: LoadedModel, token_ids: torch.Tensor) -> torch.Tensor:
    """A plain forward pass (no recording): the model's own logits (seq, vocab)."""
    with model.lock, torch.no_grad():
        out = model.hf_model(token_ids.unsqueeze(0).to(model.device))
    return out.logits[0].float().cpu()


@dataclass(frozen=True)
class SublayerTrace:
    resid_in: torch.Tensor  # (block, seq, d_model): block input
    # (block, seq, d_model): residual after the attention sublayer. In a PARALLEL block (``parallel``)
    # no such state exists: this is then ``resid_in + attention output``, which the model never
    # computes; only the differences (attention = mid - in, MLP = out - mid) mean something there.
    resid_mid: torch.Tensor
    resid_out: torch.Tensor  # (block, seq, d_model): block output
    logits: torch.Tensor  # (seq, vocab)
    parallel: bool = False  # both sublayers read resid_in (adapter topology "parallel")


def _resid_mid(block, at_mlp: bool):
    """Inside a trace: a sequential block's residual between attention and MLP, the input of its
    pre-MLP norm, or of the MLP itself where there is none (``at_mlp``: OLMo 2)."""
    return _first(block.mlp.input) if at_mlp else _first(block.pre_mlp_norm.input)


def sublayer_stream(model: LoadedModel, token_ids: torch.Tensor) -> SublayerTrace:
    """Residual stream before, between and after the attention and MLP sublayers of every block.

    The middle state is the input of the block's pre-MLP norm (adapter ``pre_mlp_norm``; the MLP's
    own input where there is none, OLMo 2), so each sublayer's contribution is a difference of
    residuals whatever extra norms the family has. In a parallel block (GPT-NeoX, Phi, GPT-J) the
    attention module's output is recorded instead and ``resid_mid = resid_in + attention``, so the
    two contributions are still exact (the parallel families add their sublayer outputs unnormalised).
    """
    spec = model.spec
    parallel, at_mlp = spec.parallel, spec.pre_mlp_norm is None
    if parallel and spec.mlp_post_norm is not None:  # no family has one: its attention write would need it too
        spec.require_sequential("Splitting a block with post-sublayer norms into its two contributions")
    lm, n_layers = model.lm, model.info.n_layers
    with model.lock, torch.no_grad():
        with lm.trace(token_ids.unsqueeze(0).to(model.device), **_trace_options(model)):
            ins, mids, outs = [], [], []
            for layer in range(n_layers):
                block = lm.layers[layer]
                ins.append(_first(block.input))
                mids.append(_first(block.attn.output) if parallel else _resid_mid(block, at_mlp))
                outs.append(_first(block.output))
            logits = lm.output.logits
            nnsight.save(ins)
            nnsight.save(mids)
            nnsight.save(outs)
            logits = nnsight.save(logits)
    stack = lambda states: torch.stack([s[0].detach().float().cpu() for s in states])  # noqa: E731
    resid_in, mid = stack(ins), stack(mids)
    if parallel:
        mid = resid_in + mid  # the attention output added to the block input (see SublayerTrace)
    return SublayerTrace(resid_in, mid, stack(outs), logits[0].detach().float().cpu(), parallel=parallel)


def skip_layers(
    model: LoadedModel, token_ids: torch.Tensor, skipped: list[int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched run where row ``i`` skips block ``skipped[i]`` (None: skips nothing).

    Skipping a block replaces its output with its input. Returns ``(resid, logits)``:
    resid (row, slot, seq, d_model), the block-0 input then every block
    output of each row, and logits (row, seq, vocab).
    """
    lm, n_layers = model.lm, model.info.n_layers
    batch = token_ids.unsqueeze(0).expand(len(skipped), -1).to(model.device)
    with model.lock, torch.no_grad():
        with lm.trace(batch, **_trace_options(model)):
            states = []
            for layer in range(n_layers):
                block_in = _first(lm.layers[layer].input)  # inputs before outputs: nnsight reads in order
                if layer == 0:
                    states.append(block_in)
                block_out = _first(lm.layers[layer].output)
                for row, skip in enumerate(skipped):
                    if skip == layer:
                        block_out[row] = block_in[row]  # in place: this row skips this block
                states.append(block_out)
            logits = lm.output.logits
            nnsight.save(states)
            logits = nnsight.save(logits)
    resid = torch.stack([s.detach().float().cpu() for s in states], dim=1)
    return resid, logits.detach().float().cpu()


# ---------------------------------------------------------------------- MLP neurons
# A neuron's activation is the input of the MLP's output projection at its index
# (``act(gate) * up`` for gated MLPs, ``act(fc)`` for GPT-2); ``neurons`` axis = d_mlp.


def mlp_activations(model: LoadedModel, token_ids: torch.Tensor) -> torch.Tensor:
    """(block, batch, seq, neuron) MLP neuron activations for a (batch, seq) block of equal-length rows.

    Logits are computed for the last position only (``logits_to_keep=1``): the vocabulary
    projection of every position would cost more than the whole rest of the pass.
    """
    if token_ids.ndim != 2:
        raise ValueError("token_ids must be (batch, seq)")
    lm, n_layers, spec = model.lm, model.info.n_layers, model.spec
    with model.lock, torch.no_grad():
        with lm.trace(token_ids.to(model.device), logits_to_keep=1, **_trace_options(model)):
            acts = []
            for layer in range(n_layers):
                acts.append(parts.mlp_out_envoy(spec, lm.layers[layer].mlp).input)
            nnsight.save(acts)
    return torch.stack([a.detach().float().cpu() for a in acts])


@dataclass(frozen=True)
class NeuronScaleTrace:
    logits: torch.Tensor  # (vocab,) final-position logits with the neuron scaled
    activation: torch.Tensor  # (seq,) the neuron's activation before scaling


def scale_neuron(
    model: LoadedModel, token_ids: torch.Tensor, layer: int, neuron: int, factor: float
) -> NeuronScaleTrace:
    """Run ``token_ids`` (seq,) with one MLP neuron's activation multiplied by ``factor`` at every
    position (0 ablates it, 2 doubles it); the final-position logits and the clean activation."""
    if token_ids.ndim != 1:
        raise ValueError("token_ids must be one sequence, shape (seq,)")
    lm, spec = model.lm, model.spec
    with model.lock, torch.no_grad():
        with lm.trace(token_ids.unsqueeze(0).to(model.device), **_trace_options(model)):
            acts = parts.mlp_out_envoy(spec, lm.layers[layer].mlp).input  # (1, seq, neurons)
            clean = nnsight.save(acts[0, :, neuron].clone())
            acts[:, :, neuron] = acts[:, :, neuron] * factor
            logits = nnsight.save(lm.output.logits[0, -1])
    # the model's own output logits: Gemma's soft-cap is already applied by its forward
    return NeuronScaleTrace(logits=logits.detach().float().cpu(), activation=clean.detach().float().cpu())


@dataclass(frozen=True)
class AttentionTrace:
    attn: torch.Tensor  # (n_layers, heads, query, key): attention probabilities of every head
    resid: torch.Tensor  # (slot, seq, d_model): block-0 input, then block outputs
    mlp_write: torch.Tensor  # (n_layers, seq, d_model): what each block's MLP adds to the residual
    logits: torch.Tensor  # (seq, vocab)


def attention_and_states(model: LoadedModel, token_ids: torch.Tensor) -> AttentionTrace:
    """One forward pass recording every head's attention probabilities, the residual stream and
    each MLP's write to the residual (block output minus the input of its pre-MLP norm, so
    Gemma's extra post-MLP norm is included; in a parallel block, where no residual separates the
    sublayers, the MLP module's output, which the block adds as it is). Needs eager attention (the loader's default):
    other implementations return no probabilities."""
    if token_ids.ndim != 1:
        raise ValueError("token_ids must be one sequence, shape (seq,)")
    spec = model.spec
    parallel, at_mlp = spec.parallel, spec.pre_mlp_norm is None
    if parallel and spec.mlp_post_norm is not None:  # the MLP module's output would miss that norm
        spec.require_sequential("Recording each MLP's write to the residual stream")
    lm, n_layers = model.lm, model.info.n_layers
    with model.lock, torch.no_grad():
        with lm.trace(token_ids.unsqueeze(0).to(model.device), **_trace_options(model)):
            probs, states, mids = [], [], []
            states.append(_first(lm.layers[0].input))
            for layer in range(n_layers):
                block = lm.layers[layer]
                probs.append(block.attn.output[1])
                # parallel: the MLP's output is what it adds; sequential: the residual before it
                mids.append(_first(block.mlp.output) if parallel else _resid_mid(block, at_mlp))
                states.append(_first(block.output))
            logits = lm.output.logits
            nnsight.save(probs)
            nnsight.save(states)
            nnsight.save(mids)
            logits = nnsight.save(logits)
    if any(p is None for p in probs):
        raise RuntimeError("attention probabilities are missing: load the model with eager attention")
    attn = torch.stack([p[0].detach().float().cpu() for p in probs])
    resid = torch.stack([s[0].detach().float().cpu() for s in states])
    mid = torch.stack([m[0].detach().float().cpu() for m in mids])
    mlp_write = mid if parallel else resid[1:] - mid
    return AttentionTrace(attn=attn, resid=resid, mlp_write=mlp_write, logits=logits[0].detach().float().cpu())


# ---------------------------------------------------------------------- concept-depth probes
# Representation sites of one text's last token, per block: "mlp_input" is the output of the
# block's pre-MLP norm (adapter ``pre_mlp_norm``: the post-attention norm in Llama, Jin et al.'s
# choice), i.e. what the MLP reads (OLMo 2: the un-normalised residual), "block_output" the
# block's output (residual stream after the block).
LAST_TOKEN_SITES = ("mlp_input", "block_output")


def _right_padded(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, lengths) of sequences padded on the right.

    Pads are masked and come after every real token: any id in the embedding works (0 always
    does; some tokenizers' own pad id lies outside the model's vocabulary)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.zeros((len(sequences), int(lengths.max())), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask, lengths


def last_token_states(model: LoadedModel, sequences: list[list[int]], site: str = "mlp_input") -> torch.Tensor:
    """(block, example, d_model) states at the last token of each sequence, one batched pass.

    Rows are right-padded with an attention mask and the state is gathered at each row's last real
    token: with causal attention, pads after it cannot reach it and positions stay 0..len-1, so every
    row equals its unbatched run. Only the last position's logits are computed (``logits_to_keep=1``).
    """
    if site not in LAST_TOKEN_SITES:
        raise ValueError(f"site must be one of {LAST_TOKEN_SITES}")
    ids, mask, lengths = _right_padded(sequences)
    rows, last = torch.arange(len(sequences)), lengths - 1
    lm, n_layers = model.lm, model.info.n_layers
    # the norm's output where the alias exists, else what the MLP reads (OLMo 2: the residual itself;
    # parallel blocks: the output of the norm the MLP reads, which is its input)
    norm_output = model.spec.sequential and model.spec.pre_mlp_norm is not None
    with model.lock, torch.no_grad():
        with lm.trace({"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)},
                      logits_to_keep=1, **_trace_options(model)):
            states = []
            for layer in range(n_layers):
                block = lm.layers[layer]
                if site == "mlp_input":
                    value = block.pre_mlp_norm.output if norm_output else _first(block.mlp.input)
                else:
                    value = _first(block.output)
                states.append(value[rows, last])
            nnsight.save(states)
    return torch.stack([s.detach().float().cpu() for s in states])
