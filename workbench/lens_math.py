"""The two formulas every lens shares, in one place: KL divergence between next-token
distributions given as log-probabilities, and the final logit soft-cap (Gemma).

Used inside traces (``workbench.tracing``, so they also run on NDIF) and by the analyses.
"""

from __future__ import annotations

import torch


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities (clamped at 0 against rounding)."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` when the model sets a cap, else the logits unchanged."""
    return torch.tanh(logits / cap) * cap if cap else logits
