"""Logit lens: what each layer would predict if the model stopped there.

nostalgebraist (2020), "interpreting GPT: the logit lens"; as used by Belrose et
al. (2023), "Eliciting Latent Predictions from Transformers with the Tuned Lens".

For each residual-stream slot ``h_l`` (the block-0 input, then every block's
output) and each position: ``p_l = softmax(W_U · norm_f(h_l))`` through the
model's own final norm and unembedding. At the last slot this is exactly the
model's output distribution. Reported per (layer, position): the top-k tokens
and probabilities, and ``KL(p_final || p_l)`` in nats; per layer, the rank
(1 = top) and probability of an optional target token at the last position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workbench.errors import BadRequest
from workbench.models.loader import LoadedModel

NAME = "logit_lens"
VERSION = 1
MAX_TOP_K = 20


@dataclass(frozen=True)
class LogitLensRequest:
    prompt: str
    target: str = ""  # one token, e.g. " Paris"; empty for none
    top_k: int = 5

    def __post_init__(self):
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}.")


@dataclass(frozen=True, eq=False)
class LogitLensResult:
    model_name: str
    layer_labels: np.ndarray  # (layer,) str: "embed", "0", ..., str(n_layers - 1)
    tokens: np.ndarray  # (seq,) str: the input tokens
    top_ids: np.ndarray  # (layer, seq, k) int64
    top_tokens: np.ndarray  # (layer, seq, k) str
    top_probs: np.ndarray  # (layer, seq, k) float32
    kl_to_final: np.ndarray  # (layer, seq) float32, nats
    target_token: str  # "" when no target was asked for
    target_id: int  # -1 when no target
    target_rank: np.ndarray  # (layer,) int64 at the last position, 1 = top; (0,) without target
    target_prob: np.ndarray  # (layer,) float32 at the last position; (0,) without target

    def __post_init__(self):
        n_layer, seq, k = self.top_ids.shape
        expected = {
            "layer_labels": (n_layer,),
            "tokens": (seq,),
            "top_tokens": (n_layer, seq, k),
            "top_probs": (n_layer, seq, k),
            "kl_to_final": (n_layer, seq),
            "target_rank": (n_layer,) if self.target_token else (0,),
            "target_prob": (n_layer,) if self.target_token else (0,),
        }
        for field_name, shape in expected.items():
            actual = getattr(self, field_name).shape
            if actual != shape:
                raise ValueError(f"LogitLensResult.{field_name} has shape {actual}, expected {shape}")

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks (the rows are one more: the embedding slot)."""
        return len(self.layer_labels) - 1


RESULT_TYPE = LogitLensResult


def layer_labels(n_layers: int) -> np.ndarray:
    return np.array(["embed"] + [str(i) for i in range(n_layers)])


def compute(
    model: LoadedModel,
    tokens: tuple[str, ...],
    resid: torch.Tensor,
    request: LogitLensRequest,
    target_id: int | None,
    progress: Callable[[float | None, str], None] = lambda f, m: None,
) -> LogitLensResult:
    """Decode every residual slot of ``resid`` (layer, seq, d_model) through the unembedding."""
    n_slots, seq, _ = resid.shape
    k = request.top_k
    top_ids = np.zeros((n_slots, seq, k), np.int64)
    top_probs = np.zeros((n_slots, seq, k), np.float32)
    kl = np.zeros((n_slots, seq), np.float32)
    ranks = np.zeros(n_slots if target_id is not None else 0, np.int64)
    target_probs = np.zeros(n_slots if target_id is not None else 0, np.float32)
    final_logprobs = None
    # Last chunk first: the final distribution then comes from the very same computation as
    # the last row, so KL(final || final) is exactly 0.
    for chunk in reversed(_slot_chunks(n_slots, seq, model.info.vocab_size)):
        logprobs = torch.log_softmax(model.decode(resid[chunk]).float(), dim=-1)  # (slots, seq, vocab)
        if final_logprobs is None:
            final_logprobs = logprobs[-1]
        top = logprobs.topk(k, dim=-1)
        top_ids[chunk], top_probs[chunk] = top.indices.numpy(), top.values.exp().numpy()
        kl[chunk] = kl_divergence(final_logprobs, logprobs).numpy()
        if target_id is not None:
            last = logprobs[:, -1]  # (slots, vocab)
            target = last[:, target_id : target_id + 1]
            ranks[chunk] = ((last > target).sum(-1) + 1).numpy()
            target_probs[chunk] = target[:, 0].exp().numpy()
        done = n_slots - chunk.start
        progress(done / n_slots, f"Decoded {done} of {n_slots} layers")
    return LogitLensResult(
        model_name=model.name,
        layer_labels=layer_labels(n_slots - 1),
        tokens=np.array(tokens),
        top_ids=top_ids,
        top_tokens=_decode_ids(model, top_ids),
        top_probs=top_probs,
        kl_to_final=kl,
        target_token=request.target if target_id is not None else "",
        target_id=-1 if target_id is None else target_id,
        target_rank=ranks,
        target_prob=target_probs,
    )


def _slot_chunks(n_slots: int, seq: int, vocab: int, budget_bytes: int = 256 << 20) -> list[slice]:
    """Consecutive slot ranges whose (slots, seq, vocab) float32 logits fit in the budget."""
    # live at the peak, per slot: logits while log-softmax runs, log-probs, and KL's two temporaries
    # (measured peak ~5 such arrays with the allocator's slack; tests/test_memory.py)
    per_slot = max(1, seq * vocab * 4 * 5)
    size = max(1, min(n_slots, budget_bytes // per_slot))
    return [slice(start, min(start + size, n_slots)) for start in range(0, n_slots, size)]


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def _decode_ids(model: LoadedModel, ids: np.ndarray) -> np.ndarray:
    unique = np.unique(ids)
    text = {int(i): model.tokenizer.decode([int(i)]) for i in unique}
    return np.vectorize(text.__getitem__, otypes=[object])(ids).astype(str)
