"""Logit lens: what each layer would predict if the model stopped there.

nostalgebraist (2020), "interpreting GPT: the logit lens"; as used by Belrose et
al. (2023), "Eliciting Latent Predictions from Transformers with the Tuned Lens".

For each residual-stream slot ``h_l`` (the block-0 input, then every block's
output) and each position: ``p_l = softmax(W_U · norm_f(h_l))`` through the
model's own final norm and unembedding. At the last slot this is exactly the
model's output distribution. Reported per (slot, position): the top-k tokens
and probabilities, and ``KL(p_final || p_l)`` in nats; per layer, the rank
(1 = top) and probability of an optional target token at the last position.

The decoding and these reductions run inside the model's trace (``tracing.reduce_slots`` with
``lenses.logit_lens_statistics``), so only the small statistics leave it: the same code runs
locally and on NDIF.

``run_batch`` answers several requests with one right-padded forward (``tracing.reduce_slots_batch``;
the runtime gathers concurrent requests; more forwards only when their tokens exceed the lens
budget): every row's real positions are packed into one sequence (pads dropped before anything is
decoded), which the same ``lenses.logit_lens_statistics`` reduces (top-k and KL to the final
distribution are per position), then split back by row; each target is read at its own prompt's
last position of that decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import lenses, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary, check_shapes, slot_labels
from workbench.errors import BadRequest

NAME = "logit_lens"
VERSION = 3  # 3: byte tokens shown as <0x..>, top tokens through prompts.token_strings
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
    layer_labels: np.ndarray  # (slot,) str: "embed", "0", ..., str(n_layers - 1)
    tokens: np.ndarray  # (seq,) str: the input tokens
    top_ids: np.ndarray  # (slot, seq, k) int64
    top_tokens: np.ndarray  # (slot, seq, k) str
    top_probs: np.ndarray  # (slot, seq, k) float32
    kl_to_final: np.ndarray  # (slot, seq) float32, nats
    target_token: str  # "" when no target was asked for
    target_id: int  # -1 when no target
    target_rank: np.ndarray  # (slot,) int64 at the last position, 1 = top; (0,) without target
    target_prob: np.ndarray  # (slot,) float32 at the last position; (0,) without target

    def __post_init__(self):
        n_slot, seq, k = self.top_ids.shape
        target = (n_slot,) if self.target_token else (0,)
        check_shapes(self, {"layer_labels": (n_slot,), "tokens": (seq,), "top_tokens": (n_slot, seq, k),
                            "top_probs": (n_slot, seq, k), "kl_to_final": (n_slot, seq), "target_rank": target,
                            "target_prob": target})

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks (the rows are one more: the embedding slot)."""
        return len(self.layer_labels) - 1


@dataclass(frozen=True)
class LensTrace:
    """Per residual slot, reduced inside the trace."""

    top_ids: torch.Tensor  # (slot, seq, k) int64
    top_logprobs: torch.Tensor  # (slot, seq, k) float32
    kl_to_final: torch.Tensor  # (slot, seq) float32: KL(p_final || p_slot), nats
    target_logprob: torch.Tensor  # (slot,) at the last position; (0,) without a target
    target_rank: torch.Tensor  # (slot,) int64, 1 = top; (0,) without a target


def lens_statistics(model, token_ids: torch.Tensor, k: int, target_id: int | None,
                    budget_bytes: int = lenses.LENS_BUDGET_BYTES) -> LensTrace:
    """The logit lens in one trace: every slot decoded through the model's ``Unembed`` in chunks
    of slots that fit ``budget_bytes`` and reduced there (``lenses.logit_lens_statistics``), so
    memory stays at one chunk's logits and, on NDIF, only the statistics travel back."""
    chunk = lenses.lens_chunk_slots(len(token_ids), model.info.vocab_size, budget_bytes)
    stats = tracing.reduce_slots(model, token_ids, lenses.logit_lens_statistics, k, target_id, chunk)

    def joined(chunks: list, dtype: torch.dtype) -> torch.Tensor:  # chunks came last-first
        return torch.cat(list(reversed(chunks))).to(dtype) if chunks else torch.zeros(0, dtype=dtype)

    return LensTrace(joined(stats["top_ids"], torch.int64), joined(stats["top_logprobs"], torch.float32),
                     joined(stats["kl"], torch.float32), joined(stats["target_logprob"], torch.float32),
                     joined(stats["target_rank"], torch.int64))


def batch_lens_statistics(model, sequences: list[torch.Tensor], k: int, target_ids: list[int | None],
                          budget_bytes: int = lenses.LENS_BUDGET_BYTES) -> list[LensTrace]:
    """``lens_statistics`` of several prompts from ONE forward pass (right-padded, masked), one
    ``LensTrace`` per prompt with the top ``k`` (take fewer by slicing: top-k lists are sorted).

    Inside the trace the real positions of every row are packed into one (1, tokens, d_model)
    sequence per slot, so padded positions are never decoded and the decode memory follows the
    real token count; ``lens_chunk_slots`` sizes the chunks for it as for one prompt that long.
    Each target is read at its prompt's last position of the same decode."""
    lengths = [len(seq) for seq in sequences]
    ends = np.cumsum(lengths) - 1  # each prompt's last position in the packed sequence
    wanted = [(int(end), target) for end, target in zip(ends, target_ids, strict=True) if target is not None]
    chunk = lenses.lens_chunk_slots(sum(lengths), model.info.vocab_size, budget_bytes)
    stats = tracing.reduce_slots_batch(model, [seq.tolist() for seq in sequences], _batch_reduction, k, chunk,
                                       wanted)

    def joined(chunks: list, dtype: torch.dtype) -> torch.Tensor:  # chunks came last-first
        return torch.cat(list(reversed(chunks))).to(dtype)

    top_ids = joined(stats["top_ids"], torch.int64)  # (slot, tokens, k), prompts one after another
    top_logprobs = joined(stats["top_logprobs"], torch.float32)
    kl = joined(stats["kl"], torch.float32)
    if wanted:
        target_logprob = joined(stats["position_target_logprob"], torch.float32)  # (slot, target)
        target_rank = joined(stats["position_target_rank"], torch.int64)
    out, start, column = [], 0, 0
    for length, target_id in zip(lengths, target_ids, strict=True):
        rows = slice(start, start + length)
        if target_id is None:
            logprob, rank = torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
        else:
            logprob, rank = target_logprob[:, column].clone(), target_rank[:, column].clone()
            column += 1
        out.append(LensTrace(top_ids[:, rows].clone(), top_logprobs[:, rows].clone(), kl[:, rows].clone(),
                             logprob, rank))
        start += length
    return out


def _batch_reduction(unembed: lenses.Unembed, states: list, real: torch.Tensor, k: int, chunk: int,
                     wanted: list[tuple[int, int]]) -> dict:
    """In the trace: states (row, seq_max, d_model) per slot -> the real positions packed row after
    row, (1, tokens, d_model), reduced by ``lenses.logit_lens_statistics`` (per position, so packing
    changes nothing) with each target at its (packed position, id)."""
    packed = []
    for state in states:
        packed.append(state[real].unsqueeze(0))  # pads dropped here, before anything is decoded
    return lenses.logit_lens_statistics(unembed, packed, k, None, chunk, wanted)


def check(request: LogitLensRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: LogitLensRequest, progress) -> LogitLensResult:
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    target_id = prompts.single_token_id(model, request.target) if request.target else None
    progress(None, f"Running the model and decoding its {model.info.n_layers + 1} residual states")
    lens = lens_statistics(model, encoded.ids, request.top_k, target_id)
    return compute(model, encoded.tokens, lens, request, target_id)


def run_batch(ctx, requests: list[LogitLensRequest], progress) -> list:
    """Several requests in one batched forward (see the module docstring): one entry per request,
    its result or the error that request alone raised (a prompt too long, a target of two tokens)."""
    model = ctx.model
    out: list = [None] * len(requests)
    ready = []
    for i, request in enumerate(requests):
        try:
            encoded = ctx.encode(request.prompt)
            target_id = prompts.single_token_id(model, request.target) if request.target else None
        except Exception as exc:  # this request's own bad input; the others still run
            out[i] = exc
            continue
        ready.append((i, request, encoded, target_id))
    for group in _token_groups(ready, model.info.vocab_size):
        progress(None, f"Running the model on {len(group)} prompts at once and decoding its "
                       f"{model.info.n_layers + 1} residual states")
        k = max(request.top_k for _, request, _, _ in group)
        traces = batch_lens_statistics(model, [encoded.ids for _, _, encoded, _ in group], k,
                                       [target_id for *_, target_id in group])
        for (i, request, encoded, target_id), lens in zip(group, traces, strict=True):
            lens = LensTrace(lens.top_ids[..., :request.top_k].contiguous(),
                             lens.top_logprobs[..., :request.top_k].contiguous(),
                             lens.kl_to_final, lens.target_logprob, lens.target_rank)
            out[i] = compute(model, encoded.tokens, lens, request, target_id)
    return out


def _token_groups(ready: list, vocab: int, budget_bytes: int = lenses.LENS_BUDGET_BYTES) -> list[list]:
    """The prepared requests in groups of one trace each, in order: a group holds as many prompts as
    keep four (tokens, vocab) float32 arrays (what one decoded chunk of a slot needs) within the
    lens budget, and at least one prompt, so a batch's memory stays near a single long prompt's."""
    cap = max(1, budget_bytes // (4 * 4 * vocab))
    groups: list[list] = []
    tokens = 0
    for item in ready:
        n = len(item[2].ids)
        if not groups or tokens + n > cap:
            groups.append([])
            tokens = 0
        groups[-1].append(item)
        tokens += n
    return groups


def compute(
    model,
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
        layer_labels=slot_labels(n_slots - 1),
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


def _decode_ids(model, ids: np.ndarray) -> np.ndarray:
    unique = np.unique(ids)
    text = dict(zip((int(i) for i in unique), prompts.token_strings(model, unique), strict=True))
    return np.vectorize(text.__getitem__, otypes=[object])(ids).astype(str)


def summary(result: LogitLensResult) -> list[LayerSummary]:
    """KL to the final distribution and, with a target, its rank, both at the last position."""
    labels = [str(x) for x in result.layer_labels]
    out = [LayerSummary.per_slot(result.model_name, NAME, "lens KL(final ‖ layer), last position (nats)",
                                 result.kl_to_final[:, -1], labels)]
    if result.target_token:
        out.append(LayerSummary.per_slot(result.model_name, NAME, f"lens rank of {result.target_token!r} (1 = top)",
                                         result.target_rank, labels))
    return out


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Logit lens", Request=LogitLensRequest, Result=LogitLensResult,
    run=run, check=check, summary=summary, run_batch=run_batch,
    compare_request=lambda inputs: LogitLensRequest(inputs.prompt, inputs.target), compare_figure="heatmap",
)
