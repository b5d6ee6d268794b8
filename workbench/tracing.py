"""The only module that opens nnsight traces.

Owns running a model under nnsight and handing back plain tensors. Every trace
holds the model's lock, so Streamlit sessions sharing one model never run
traces concurrently (nnsight's greenlet-based tracing breaks under threads).

Axis vocabulary used in shapes: ``layer`` (residual-stream slots: the block-0
input, then each block's output, so ``n_layers + 1``), ``seq`` (token
positions), ``d_model``, ``vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import torch

from workbench.models.loader import LoadedModel


@dataclass(frozen=True)
class ResidualTrace:
    resid: torch.Tensor  # (layer = n_layers + 1, seq, d_model): block-0 input, then block outputs
    logits: torch.Tensor  # (seq, vocab): the model's own output logits


def _first(value):
    """Decoder blocks return a tensor in transformers 5, a tuple in some architectures."""
    return value[0] if isinstance(value, tuple) else value


def residual_stream(model: LoadedModel, token_ids: torch.Tensor) -> ResidualTrace:
    """One forward pass recording the residual stream before block 0 and after every block."""
    if token_ids.ndim != 1:
        raise ValueError("token_ids must be one sequence, shape (seq,)")
    lm = model.lm
    with model.lock, torch.no_grad():
        with lm.trace(token_ids.unsqueeze(0).to(model.device)):
            states = []
            states.append(_first(lm.layers[0].input))
            for layer in range(model.info.n_layers):
                states.append(_first(lm.layers[layer].output))
            logits = lm.output.logits
            nnsight.save(states)
            logits = nnsight.save(logits)
    resid = torch.stack([s[0].detach().float().cpu() for s in states])  # (layer, seq, d_model)
    return ResidualTrace(resid=resid, logits=logits[0].detach().float().cpu())


def forward_logits(model: LoadedModel, token_ids: torch.Tensor) -> torch.Tensor:
    """A plain forward pass (no recording), the baseline that benchmarks compare against."""
    with model.lock, torch.no_grad():
        out = model.hf_model(token_ids.unsqueeze(0).to(model.device))
    return out.logits[0].float().cpu()
