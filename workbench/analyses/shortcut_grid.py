"""Shortcut grid: replace blocks l .. l'-1 by one fitted affine map, and see what the output keeps.

Din, Karidi, Choshen & Geva (2023), "Jump to Conclusions: Short-Cutting Transformers With Linear
Transformations", section 3 (``mat``: maps between any two layers): for source slot ``l`` and a
later target slot ``l'``, the affine map ``h_l' ~ A h_l + b`` of least squared error over a corpus's
hidden states (``lenses.fit_linear_shortcuts_between``, closed form, with the same small ridge
toward the identity as the linear shortcut). On held-out text, the residual at slot ``l'`` is
replaced by ``A h_l + b`` at every position and the model's own forward continues from block
``l'`` (at ``l' = L`` the state is decoded directly); reported per ``(l, l')``: mean KL(final ‖
patched) over held-out tokens and top-1 agreement with the model's final prediction, against the
"skip" baseline ``h_l' := h_l`` (blocks l .. l'-1 simply left out).

Invariants (tested): the map ``A = I, b = 0`` gives exactly the skip baseline, ``l' = l`` is the
model itself, the skip of one block equals ``tracing.skip_layers``, and the column ``l' = L`` of
the skip baseline is the logit lens (of the map: the linear shortcut). Slots are a strided subset
(``stride``; 0 picks one that keeps the grid small) so that the maps fit in memory. Held-out
statistics use every position, as the lens comparisons do; fitting leaves out each chunk's first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from workbench import interventions, lens_fitting, tracing
from workbench.analyses.base import Analysis
from workbench.analyses.tuned_lens import corpus_chunks
from workbench.axes import check_shapes, slot_labels
from workbench.corpus import CORPORA
from workbench.errors import BadRequest
from workbench.lenses import apply_map, decode, fit_linear_shortcuts_between, kl_divergence

NAME = "shortcut_grid"
VERSION = 1
AUTO_SLOTS = 9  # slots of the grid when ``stride`` is 0 (SmolLM2: every 4th slot and the last)
MAP_BUDGET_BYTES = 512 << 20  # float64 normal-equation right-hand sides held while fitting
ROWS_PER_FORWARD = 8  # patched runs per batched forward pass
FIT_SHARE = 0.3  # of the progress bar


@dataclass(frozen=True)
class ShortcutGridRequest:
    corpus: str = "python-reference"
    chunk_tokens: int = 64
    fit_chunks: int = 24  # corpus chunks the maps are fitted on ("train" split)
    eval_chunks: int = 2  # held-out chunks they are evaluated on ("heldout" split)
    stride: int = 0  # grid slots 0, stride, 2 * stride, ... and the last; 0: automatic

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise BadRequest(f"Unknown corpus {self.corpus!r}. Corpora: {', '.join(CORPORA)}.")
        if not 8 <= self.chunk_tokens <= 512:
            raise BadRequest("chunk_tokens must be between 8 and 512.")
        if not 1 <= self.fit_chunks <= lens_fitting.MAX_FIT_CHUNKS:
            raise BadRequest(f"fit_chunks must be between 1 and {lens_fitting.MAX_FIT_CHUNKS}.")
        if not 1 <= self.eval_chunks <= 16:
            raise BadRequest("eval_chunks must be between 1 and 16.")
        if not 0 <= self.stride <= 64:
            raise BadRequest("stride must be between 0 (automatic) and 64.")


@dataclass(frozen=True, eq=False)
class ShortcutGridResult:
    model_name: str
    slots: np.ndarray  # (grid,) int64: the residual slots of the grid
    slot_labels: np.ndarray  # (grid,) str: "embed", "3", ...
    fit_tokens: int
    eval_tokens: int
    kl_map: np.ndarray  # (source, target) float32, mean KL(final ‖ mapped), nats; NaN where target <= source
    kl_skip: np.ndarray  # (source, target) the same with h_l' := h_l
    top1_map: np.ndarray  # (source, target) fraction of held-out tokens whose top-1 is the final top-1
    top1_skip: np.ndarray

    def __post_init__(self):
        n = len(self.slots)
        check_shapes(self, {"slot_labels": (n,), **{name: (n, n) for name in
                                                    ("kl_map", "kl_skip", "top1_map", "top1_skip")}})


def grid_slots(n_layers: int, stride: int = 0) -> list[int]:
    """Slots 0, stride, ... below L, then L; ``stride`` 0 picks one that gives at most ``AUTO_SLOTS``."""
    step = stride or max(1, math.ceil(n_layers / (AUTO_SLOTS - 1)))
    return sorted(set(range(0, n_layers, step)) | {n_layers})


def run_from_slot(model, token_ids: torch.Tensor, slot: int, states: torch.Tensor) -> torch.Tensor:
    """Logits (row, seq, vocab) of the model continued from residual slot ``slot`` with ``states``
    (row, seq, d_model) in place of that slot at every position: block ``slot`` reads them (a
    pre-hook replaces its input) and the model's own forward runs on; slot L is decoded directly
    (final norm, unembedding, soft-cap). One batched forward of ``row`` copies of ``token_ids``."""
    if slot == model.info.n_layers:
        return decode(model, states)
    rows = states.shape[0]
    ids = token_ids.reshape(1, -1).expand(rows, -1).to(model.device)
    replacement = states.to(model.device)

    def edit(x: torch.Tensor) -> torch.Tensor:
        return replacement.to(x.dtype)

    with model.lock, torch.no_grad(), interventions.site_hook(model, slot, "resid", edit):
        out = model.hf_model(ids, use_cache=False)
    return out.logits.float().cpu()  # the model's own output: soft-caps applied by its forward


def _statistics(final: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: KL(final ‖ row) summed over positions, and the count of positions whose top-1 agrees."""
    logq = torch.log_softmax(logits.double(), -1)
    kl = kl_divergence(final[None], logq).sum(-1)
    top1 = (logq.argmax(-1) == final.argmax(-1)[None]).double().sum(-1)
    return kl, top1


def run(ctx, request: ShortcutGridRequest, progress) -> ShortcutGridResult:
    model = ctx.model
    n_layers, d_model = model.info.n_layers, model.info.d_model
    slots = grid_slots(n_layers, request.stride)
    pairs = [(s, t) for s in slots for t in slots if t > s]
    if len(pairs) * (d_model + 1) * d_model * 8 > MAP_BUDGET_BYTES:
        raise BadRequest(f"{len(slots)} slots make {len(pairs)} maps of {d_model}x{d_model}: too many to fit at once. "
                         "Choose a larger stride.")
    config = lens_fitting.FitConfig("linear_shortcut", request.corpus, request.chunk_tokens, request.fit_chunks)
    fit_tokens = [0]

    def fit_progress(fraction, message):
        progress(None if fraction is None else FIT_SHARE * fraction, message)

    streams = lens_fitting.residual_streams(model, lens_fitting.fit_chunks(model, config), fit_progress,
                                            "Fitting the maps between slots", fit_tokens)
    maps = fit_linear_shortcuts_between(streams, slots[:-1], slots[1:], d_model)
    held_out = corpus_chunks(model, request.corpus, "heldout", request.chunk_tokens, request.eval_chunks)
    if not held_out:
        raise BadRequest("The held-out corpus produced no chunks; use a shorter chunk_tokens.")
    index = {slot: i for i, slot in enumerate(slots)}
    n = len(slots)
    totals = {key: torch.zeros(n, n, dtype=torch.float64) for key in ("kl_map", "kl_skip", "top1_map", "top1_skip")}
    eval_tokens = 0
    targets = slots[1:]
    steps = len(held_out) * len(targets)
    for c, ids in enumerate(held_out):
        trace = tracing.residual_stream(model, ids)
        final = torch.log_softmax(trace.logits.double(), -1)  # (seq, vocab)
        for k, target in enumerate(targets):
            progress(FIT_SHARE + (1 - FIT_SHARE) * (c * len(targets) + k) / steps,
                     f"Held-out chunk {c + 1} of {len(held_out)}: patching slot {target}")
            rows = []  # (source, kind, state)
            for source in slots:
                if source < target:
                    weight, bias = maps[(source, target)]
                    rows.append((source, "map", apply_map(trace.resid[source], weight, bias)))
                    rows.append((source, "skip", trace.resid[source]))
            for start in range(0, len(rows), ROWS_PER_FORWARD):
                group = rows[start:start + ROWS_PER_FORWARD]
                logits = run_from_slot(model, ids, target, torch.stack([state for _, _, state in group]))
                kl, top1 = _statistics(final, logits)
                for (source, kind, _), kl_row, top1_row in zip(group, kl, top1, strict=True):
                    totals[f"kl_{kind}"][index[source], index[target]] += kl_row
                    totals[f"top1_{kind}"][index[source], index[target]] += top1_row
        eval_tokens += len(ids)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)

    def mean(key: str) -> np.ndarray:
        return torch.where(upper, totals[key] / max(eval_tokens, 1), torch.nan).float().numpy()

    labels = slot_labels(n_layers)
    return ShortcutGridResult(
        model_name=model.name, slots=np.array(slots, dtype=np.int64), slot_labels=labels[slots],
        fit_tokens=fit_tokens[0], eval_tokens=eval_tokens, kl_map=mean("kl_map"), kl_skip=mean("kl_skip"),
        top1_map=mean("top1_map"), top1_skip=mean("top1_skip"),
    )


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Shortcuts between layers", Request=ShortcutGridRequest,
    Result=ShortcutGridResult, run=run,
)
