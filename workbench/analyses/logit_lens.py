"""Logit lens: what each layer would predict if the model stopped there.

nostalgebraist (2020), "interpreting GPT: the logit lens"; as used by Belrose et
al. (2023), "Eliciting Latent Predictions from Transformers with the Tuned Lens".

For each residual-stream slot ``h_l`` (the block-0 input, then every block's
output) and each position: ``p_l = softmax(W_U · norm_f(h_l))`` through the
model's own final norm and unembedding. At the last slot this is exactly the
model's output distribution. Reported per (layer, position): the top-k tokens
and probabilities, and ``KL(p_final || p_l)`` in nats; per layer, the rank
(1 = top) and probability of an optional target token at the last position.

The decoding and these reductions run inside the model's trace (``tracing.lens_statistics``), so
only the small statistics leave it: the same code runs locally and on NDIF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.errors import BadRequest
from workbench.models.loader import LoadedModel
from workbench.tracing import LensTrace

NAME = "logit_lens"
VERSION = 2  # 2: decoded inside the trace (one slot at a time), so it also runs remotely
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
    lens: LensTrace,
    request: LogitLensRequest,
    target_id: int | None,
) -> LogitLensResult:
    """The result from the lens statistics of one trace (``tracing.lens_statistics``)."""
    n_slots = lens.kl_to_final.shape[0]
    top_ids = lens.top_ids.numpy()
    return LogitLensResult(
        model_name=model.name,
        layer_labels=layer_labels(n_slots - 1),
        tokens=np.array(tokens),
        top_ids=top_ids,
        top_tokens=_decode_ids(model, top_ids),
        top_probs=lens.top_logprobs.exp().numpy(),
        kl_to_final=lens.kl_to_final.numpy(),
        target_token=request.target if target_id is not None else "",
        target_id=-1 if target_id is None else target_id,
        target_rank=lens.target_rank.numpy(),
        target_prob=lens.target_logprob.exp().numpy(),
    )


def _decode_ids(model: LoadedModel, ids: np.ndarray) -> np.ndarray:
    unique = np.unique(ids)
    text = {int(i): model.tokenizer.decode([int(i)]) for i in unique}
    return np.vectorize(text.__getitem__, otypes=[object])(ids).astype(str)
