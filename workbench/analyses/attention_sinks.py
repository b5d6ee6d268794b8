"""Attention sinks: which tokens soak up attention, and secondary sinks in the hidden states.

Gu et al. (2025), "When Attention Sink Emerges in Language Models: An Empirical View":
the sink score of key ``k`` in head ``(l, h)`` is the mean attention it receives from
the later queries, ``alpha_k = 1/(T-1-k) * sum_{i>k} A[i, k]`` (0-indexed positions; this
is ``1/(T-k) * sum_{i>k}`` in the paper's 1-indexed notation). A head "sinks" on ``k`` when
``alpha_k > eps`` (eps = 0.3). The last position has no later query: its score is NaN.

Wong et al., "On the Existence and Behaviour of Secondary Attention Sinks": the first
position (``<bos>`` where the tokenizer adds one, else the first real token, which plays
the BOS role) is the primary sink. Its residual norm jumps at one block and drops at a
later one; between them is the *BOS sink window*. Inside the window token ``t`` is a sink
at a residual slot when ``|cos(h_t, h_first)| > 0.9``; its lifetime is the number of such
slots; lifetime >= L - 15 is primary-like, 4 < lifetime < L - 15 secondary, else noise
(L = number of blocks; the margins are request fields). The MLP of the block whose output
first makes ``t`` a sink is reported as its creator, with the cosine of that MLP's write
to the sink direction (the first token's state at that slot) and the write's L2 norm.

Residual slots: 0 is the block-0 input, slot s >= 1 is the output of block s - 1.
Everything below ``compute`` is a pure function of tensors, testable on hand-set values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary
from workbench.errors import BadRequest

NAME = "attention_sinks"
VERSION = 3  # 3: byte tokens shown as <0x..>

KIND_FIRST = "first"  # the first position: the primary sink by construction
KIND_PRIMARY = "primary-like"
KIND_SECONDARY = "secondary"
KIND_NOISE = "noise"  # a sink for a few slots only
KIND_NONE = "none"  # never a sink inside the window


@dataclass(frozen=True)
class SinkThresholds:
    """Every threshold of the method, shared by the single probe and the batch mode."""

    eps: float = 0.3  # sink score threshold (Gu et al.)
    cos_threshold: float = 0.9  # |cos(h_t, h_first)| above which t is a sink at a slot
    primary_margin: int = 15  # lifetime >= n_layers - margin: primary-like
    min_secondary_lifetime: int = 4  # lifetime > this (and below the primary bound): secondary

    def __post_init__(self):
        if not 0.0 < self.eps < 1.0:
            raise BadRequest(f"The sink-score threshold eps must be between 0 and 1, got {self.eps}.")
        if not 0.0 < self.cos_threshold < 1.0:
            raise BadRequest(f"The cosine threshold must be between 0 and 1, got {self.cos_threshold}.")
        if self.primary_margin < 0 or self.min_secondary_lifetime < 0:
            raise BadRequest("The lifetime margins must be zero or positive.")


@dataclass(frozen=True)
class SinkProbeRequest(SinkThresholds):
    prompt: str = ""


@dataclass(frozen=True, eq=False)
class SinkProbeResult:
    model_name: str
    tokens: np.ndarray  # (seq,) str
    first_is_bos: bool  # True when position 0 is a BOS the tokenizer added (Gemma), False for a real token
    eps: float
    cos_threshold: float
    sink_scores: np.ndarray  # (n_layers, heads, seq) float32; NaN at the last position
    layer_sink_fraction: np.ndarray  # (n_layers, seq) float32: fraction of the layer's heads with alpha > eps
    head_sink_fraction: np.ndarray  # (seq,) float32: fraction of all (block, head) with alpha > eps
    resid_norms: np.ndarray  # (n_layers + 1, seq) float32: ||h|| per residual slot
    cos_to_first: np.ndarray  # (n_layers + 1, seq) float32: cos(h_t, h_first) per residual slot
    jump_block: int  # block whose output raises the first token's norm most
    drop_block: int  # later block that lowers it most; -1 when it never drops after the jump
    window_start: int  # first residual slot of the BOS sink window
    window_end: int  # last residual slot of the window (inclusive)
    is_sink: np.ndarray  # (n_layers + 1, seq) bool: |cos| > threshold inside the window
    lifetimes: np.ndarray  # (seq,) int64: number of sink slots
    kinds: np.ndarray  # (seq,) str: KIND_*
    onset_slot: np.ndarray  # (seq,) int64: first sink slot, -1 if none
    mlp_alignment: np.ndarray  # (n_layers, seq) float32: cos(MLP write of block b, h_first at slot b+1)
    mlp_norm: np.ndarray  # (n_layers, seq) float32: ||MLP write of block b||
    creator_block: np.ndarray  # (seq,) int64: block whose MLP creates the sink (onset_slot - 1), -1 if none
    peer_cos: np.ndarray  # (n_layers + 1,) float32: median |cos| between two non-first tokens (NaN if < 2)

    def __post_init__(self):
        n_layers, heads, seq = self.sink_scores.shape
        expected = {
            "tokens": (seq,),
            "layer_sink_fraction": (n_layers, seq),
            "head_sink_fraction": (seq,),
            "resid_norms": (n_layers + 1, seq),
            "cos_to_first": (n_layers + 1, seq),
            "is_sink": (n_layers + 1, seq),
            "lifetimes": (seq,),
            "kinds": (seq,),
            "onset_slot": (seq,),
            "mlp_alignment": (n_layers, seq),
            "mlp_norm": (n_layers, seq),
            "creator_block": (seq,),
            "peer_cos": (n_layers + 1,),
        }
        for field_name, shape in expected.items():
            actual = getattr(self, field_name).shape
            if actual != shape:
                raise ValueError(f"SinkProbeResult.{field_name} has shape {actual}, expected {shape}")

    @property
    def n_layers(self) -> int:
        return self.sink_scores.shape[0]

    @property
    def first_head_fraction(self) -> float:
        """Fraction of (block, head) whose sink score on the first position exceeds eps."""
        return float(self.head_sink_fraction[0])

    @property
    def peer_cos_in_window(self) -> float:
        """Mean over the window of the median |cos| between non-first tokens: the anisotropy baseline.
        Near the cosine threshold, the criterion sees a direction all tokens share, not sinks."""
        return float(np.mean(self.peer_cos[self.window_start : self.window_end + 1]))

    def secondary_positions(self) -> np.ndarray:
        return np.flatnonzero(self.kinds == KIND_SECONDARY)



# ---------------------------------------------------------------------- attention view


def sink_scores(attn: torch.Tensor) -> torch.Tensor:
    """(..., query, key) causal attention -> (..., key) mean attention from strictly later queries.

    The last key has no later query: NaN there.
    """
    seq = attn.shape[-1]
    later = torch.tril(torch.ones(seq, seq, dtype=torch.bool), diagonal=-1)  # [i, k] = i > k
    received = (attn * later.to(attn.dtype)).sum(-2)
    counts = torch.arange(seq - 1, -1, -1, dtype=attn.dtype)  # T-1-k later queries
    return torch.where(counts > 0, received / counts.clamp_min(1), torch.full_like(received, float("nan")))


def sink_fraction(scores: torch.Tensor, eps: float, dims: tuple[int, ...]) -> torch.Tensor:
    """Fraction of entries over ``dims`` with score > eps (NaN scores count as not a sink)."""
    hits = (scores > eps).to(torch.float64)
    total = 1
    for d in dims:
        total *= scores.shape[d]
    return hits.sum(dim=dims) / total


# ---------------------------------------------------------------------- hidden-state view


def cosine_to_first(resid: torch.Tensor) -> torch.Tensor:
    """(slot, seq, d) -> (slot, seq): cosine of every state with the first position's state."""
    first = resid[:, :1, :]
    return torch.nn.functional.cosine_similarity(resid.double(), first.double(), dim=-1)


def peer_cosine(resid: torch.Tensor) -> torch.Tensor:
    """(slot, seq, d) -> (slot,): median |cos| over all pairs of distinct non-first positions."""
    others = torch.nn.functional.normalize(resid[:, 1:, :].double(), dim=-1)
    n = others.shape[1]
    if n < 2:
        return torch.full((resid.shape[0],), float("nan"), dtype=torch.float64)
    gram = (others @ others.transpose(1, 2)).abs()
    rows, cols = torch.triu_indices(n, n, offset=1)
    return gram[:, rows, cols].median(dim=-1).values


def sink_window(first_norms: np.ndarray) -> tuple[int, int, int, int]:
    """BOS sink window from the first position's norm per residual slot (n_layers + 1,).

    Returns ``(jump_block, drop_block, start_slot, end_slot)``: the block whose output raises
    the norm most, the later block that lowers it most (-1 if none lowers it), and the window
    as residual slots, inclusive: from the jump block's output up to the drop block's input
    (to the last slot when the norm never drops after the jump).
    """
    steps = np.diff(np.asarray(first_norms, dtype=np.float64))  # steps[b]: change made by block b
    if len(steps) == 0:
        raise ValueError("need at least one block")
    jump = int(np.argmax(steps))
    after = steps[jump + 1 :]
    if len(after) and after.min() < 0:
        drop = jump + 1 + int(np.argmin(after))
        return jump, drop, jump + 1, drop
    return jump, -1, jump + 1, len(steps)


def sink_mask(cos: np.ndarray, start: int, end: int, threshold: float) -> np.ndarray:
    """(slot, seq) bool: |cos| > threshold inside slots [start, end]; position 0 is never counted."""
    mask = np.zeros(cos.shape, dtype=bool)
    mask[start : end + 1] = np.abs(cos[start : end + 1]) > threshold
    mask[:, 0] = False
    return mask


def classify(lifetimes: np.ndarray, n_layers: int, thresholds: SinkThresholds) -> np.ndarray:
    """Kinds per position from lifetimes; position 0 is the first (primary) sink."""
    primary_bound = n_layers - thresholds.primary_margin
    kinds = np.full(lifetimes.shape, KIND_NONE, dtype=object)
    alive = lifetimes > 0
    kinds[alive] = KIND_NOISE
    kinds[(lifetimes > thresholds.min_secondary_lifetime) & (lifetimes < primary_bound)] = KIND_SECONDARY
    kinds[alive & (lifetimes >= primary_bound)] = KIND_PRIMARY
    kinds[0] = KIND_FIRST
    return kinds.astype(str)


def onset_slots(mask: np.ndarray) -> np.ndarray:
    """(slot, seq) bool -> (seq,) first True slot, -1 where never."""
    first = mask.argmax(axis=0).astype(np.int64)
    return np.where(mask.any(axis=0), first, -1)


def mlp_alignment(mlp_write: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """(n_layers, seq, d), (n_layers + 1, seq, d) -> (n_layers, seq): cosine of block b's MLP
    write at every position with the sink direction, the first position's state after block b."""
    direction = resid[1:, :1, :].double()
    return torch.nn.functional.cosine_similarity(mlp_write.double(), direction, dim=-1)


# ---------------------------------------------------------------------- the probe


def compute(
    model_name: str,
    tokens: tuple[str, ...],
    first_is_bos: bool,
    attn: torch.Tensor,
    resid: torch.Tensor,
    mlp_write: torch.Tensor,
    thresholds: SinkThresholds,
) -> SinkProbeResult:
    """The probe from one trace: attn (n_layers, heads, seq, seq), resid (n_layers + 1, seq, d),
    mlp_write (n_layers, seq, d)."""
    n_layers = attn.shape[0]
    scores = sink_scores(attn.double())
    norms = resid.double().norm(dim=-1).numpy()
    cos = cosine_to_first(resid).numpy()
    jump, drop, start, end = sink_window(norms[:, 0])
    mask = sink_mask(cos, start, end, thresholds.cos_threshold)
    lifetimes = mask.sum(axis=0).astype(np.int64)
    kinds = classify(lifetimes, n_layers, thresholds)
    onset = onset_slots(mask)
    creator = np.where(onset > 0, onset - 1, -1).astype(np.int64)
    return SinkProbeResult(
        model_name=model_name,
        tokens=np.array(tokens, dtype=str),
        first_is_bos=bool(first_is_bos),
        eps=float(thresholds.eps),
        cos_threshold=float(thresholds.cos_threshold),
        sink_scores=scores.float().numpy(),
        layer_sink_fraction=sink_fraction(scores, thresholds.eps, (1,)).float().numpy(),
        head_sink_fraction=sink_fraction(scores, thresholds.eps, (0, 1)).float().numpy(),
        resid_norms=norms.astype(np.float32),
        cos_to_first=cos.astype(np.float32),
        jump_block=jump,
        drop_block=drop,
        window_start=start,
        window_end=end,
        is_sink=mask,
        lifetimes=lifetimes,
        kinds=kinds,
        onset_slot=onset,
        mlp_alignment=mlp_alignment(mlp_write, resid).float().numpy(),
        mlp_norm=mlp_write.double().norm(dim=-1).float().numpy(),
        creator_block=creator,
        peer_cos=peer_cosine(resid).float().numpy(),
    )


def first_is_bos(ids: torch.Tensor, bos_token_id: int | None) -> bool:
    """True when position 0 is the tokenizer's BOS (Gemma adds one; SmolLM2's tokenizer adds none,
    so its first real token plays the BOS role)."""
    return bos_token_id is not None and len(ids) > 0 and int(ids[0]) == int(bos_token_id)


def check(request: SinkProbeRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: SinkProbeRequest, progress) -> SinkProbeResult:
    """Attention-sink probe of one prompt: sink scores per head, hidden-state sinks, creating MLPs."""
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    progress(None, "Recording attention, residual stream and MLP writes")
    trace = tracing.attention_and_states(model, encoded.ids)
    bos = first_is_bos(encoded.ids, model.tokenizer.bos_token_id)
    return compute(ctx.name, encoded.tokens, bos, trace.attn, trace.resid, trace.mlp_write, request)


def summary(result: SinkProbeResult) -> list[LayerSummary]:
    """Mean sink score on position 0 over each block's heads, and the share of heads above eps."""
    first = result.sink_scores[:, :, 0]
    return [
        LayerSummary.per_block(result.model_name, NAME, "sinks: mean attention to position 0", first.mean(axis=1)),
        LayerSummary.per_block(result.model_name, NAME, f"sinks: share of heads with score > {result.eps:g}",
                               result.layer_sink_fraction[:, 0]),
    ]


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Attention sinks", Request=SinkProbeRequest, Result=SinkProbeResult,
    run=run, check=check, summary=summary,
    compare_request=lambda inputs: SinkProbeRequest(prompt=inputs.prompt), compare_figure="layer_token_heatmap",
)
