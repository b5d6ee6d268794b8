"""Patchscope: decode a hidden state by letting the model itself read it in another prompt.

Ghandeharioun, Caciularu, Pearce, Dixon & Geva (2024), "Patchscopes: A Unifying Framework for
Inspecting Hidden Representations of Language Models". Owns the identity-style Patchscope: run the
source prompt once and take the residual state ``h_l`` at the source position for each source slot
``l``; then, for each pair (source slot ``l``, target slot ``l'``), run a fixed target prompt (by
default the few-shot identity prompt ``"cat -> cat; 1135 -> 1135; hello -> hello; ?"``) with the
residual at slot ``l'`` of the placeholder position replaced by ``h_l``, and let the model continue
greedily. The model "says" what it reads in ``h_l``.

Slots follow ``workbench.axes`` and ``tracing.residual_stream``: slot 0 is the input of block 0 (the
embeddings), slot ``s`` the output of block ``s - 1``, slot L the last block's output (what the final
norm reads). Patching slot ``l' < L`` rewrites the input of block ``l'`` at the placeholder (a forward
pre-hook); slot L rewrites the last block's output there. The patch is made while the target prompt
is read; generation then continues from the prompt's last token with a key/value cache, so every
generated token attends to the patched position's cached keys and values: the patch is kept, not
re-applied (tested against recomputing every step from scratch). With the placeholder at the last
token (the default), the first decoded token is read at the placeholder itself.

Batched: every (l, l') cell is one row of the same target prompt; rows differ only in which block
hook writes which vector, so one forward pass serves many cells, chunked so that a forward holds at
most ``TOKEN_BUDGET`` tokens and ``LOGITS_BUDGET_BYTES`` of next-token logits. Plain PyTorch hooks
(as ``workbench.interventions``) on the blocks the adapter names; the source states come from an
nnsight trace (``tracing.residual_stream``). Needs the weights here (hooks): not remotely on NDIF.

``next_token_logits`` is the same patch as a lens: slot ``l`` into slot ``l`` at the placeholder, the
next-token logits there, one row per slot (for the lens-comparison page).

Invariants (tests/test_patchscope.py, every tiny architecture): target prompt = source prompt,
placeholder = source position (the last) and l' = l give the model's own next-token distribution
and its own greedy continuation; target slot L gives the source's own next-token distribution in
any target prompt; a batched grid equals each cell run alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench import interventions, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary, check_shapes, slot_labels
from workbench.errors import BadRequest
from workbench.models.loader import LoadedModel

NAME = "patchscope"
VERSION = 1
IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
DEFAULT_GRID = 8  # slots per axis when the request names none, evenly spaced from 0 to L
MAX_SLOT = 512  # no supported model has more blocks; the model's own bound is checked at run time
MAX_CELLS = 1024  # source slots x target slots
MAX_NEW_TOKENS = 10
MAX_TOP_K = 20
TOKEN_BUDGET = 4096  # tokens (rows x (target prompt + generated)) in one forward pass
LOGITS_BUDGET_BYTES = 128 << 20  # next-token logits (rows x vocab, float32) held at once


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_slots(slots, what: str) -> None:
    if not isinstance(slots, tuple) or not all(_is_int(s) for s in slots):
        raise BadRequest(f"{what} must be a list of whole numbers (residual slots), got {slots!r}"[:200])
    if any(not 0 <= s <= MAX_SLOT for s in slots):
        raise BadRequest(f"{what} must lie between 0 (the embeddings) and the model's last slot.")
    if len(set(slots)) != len(slots):
        raise BadRequest(f"{what} names a slot twice.")


@dataclass(frozen=True)
class PatchscopeRequest:
    prompt: str  # the source prompt, whose state is inspected
    source_position: int = -1  # token of the source prompt; negative counts from the end
    source_slots: tuple[int, ...] = ()  # () = DEFAULT_GRID evenly spaced slots
    target_slots: tuple[int, ...] = ()  # () = DEFAULT_GRID evenly spaced slots
    target_prompt: str = IDENTITY_PROMPT
    placeholder: int = -1  # token of the target prompt that receives the state; negative from the end
    n_tokens: int = 4  # tokens decoded greedily after the target prompt
    top_k: int = 5  # first-token alternatives kept per cell

    def __post_init__(self):
        for field, what in (("prompt", "source prompt"), ("target_prompt", "target prompt")):
            text = getattr(self, field)
            if not isinstance(text, str):
                raise BadRequest(f"The {what} must be text, not {type(text).__name__}.")
            if not text.strip():
                raise BadRequest(f"The {what} is empty. Type some text.")
        for field in ("source_position", "placeholder"):
            if not _is_int(getattr(self, field)):
                raise BadRequest(f"{field} must be a whole number (a token index; negative counts from the end).")
        _check_slots(self.source_slots, "source_slots")
        _check_slots(self.target_slots, "target_slots")
        cells = (len(self.source_slots) or DEFAULT_GRID) * (len(self.target_slots) or DEFAULT_GRID)
        if cells > MAX_CELLS:
            raise BadRequest(f"{cells:,} cells (source slots x target slots) is too many; the limit is {MAX_CELLS:,}.")
        if not _is_int(self.n_tokens) or not 1 <= self.n_tokens <= MAX_NEW_TOKENS:
            raise BadRequest(f"n_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.n_tokens!r}.")
        if not _is_int(self.top_k) or not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k!r}.")


@dataclass(frozen=True, eq=False)
class PatchscopeResult:
    model_name: str
    n_layers: int
    source_tokens: np.ndarray  # (src_seq,) str
    source_position: int  # resolved, 0 <= p < src_seq
    target_tokens: np.ndarray  # (tgt_seq,) str
    placeholder: int  # resolved, 0 <= p < tgt_seq
    source_slots: np.ndarray  # (src,) int64, ascending
    target_slots: np.ndarray  # (tgt,) int64, ascending
    decoded: np.ndarray  # (src, tgt) str: the greedy continuation of each cell
    decoded_ids: np.ndarray  # (src, tgt, n_tokens) int64
    top_ids: np.ndarray  # (src, tgt, k) int64: first-token top-k
    top_tokens: np.ndarray  # (src, tgt, k) str
    top_probs: np.ndarray  # (src, tgt, k) float32
    first_prob: np.ndarray  # (src, tgt) float32: probability of the first decoded token
    own_top_ids: np.ndarray  # (k,) int64: the model's own next tokens at the source position (no patch)
    own_top_tokens: np.ndarray  # (k,) str
    own_top_probs: np.ndarray  # (k,) float32

    def __post_init__(self):
        n_src, n_tgt, k = self.top_ids.shape
        check_shapes(self, {
            "source_slots": (n_src,), "target_slots": (n_tgt,), "decoded": (n_src, n_tgt),
            "decoded_ids": (n_src, n_tgt, self.decoded_ids.shape[-1]), "top_tokens": (n_src, n_tgt, k),
            "top_probs": (n_src, n_tgt, k), "first_prob": (n_src, n_tgt), "own_top_ids": (k,),
            "own_top_tokens": (k,), "own_top_probs": (k,),
        })
        inside = 0 <= self.source_position < len(self.source_tokens) and 0 <= self.placeholder < len(self.target_tokens)
        if not inside:
            raise ValueError("PatchscopeResult: source position or placeholder outside its prompt")

    @property
    def source_labels(self) -> np.ndarray:
        """(src,) str: "embed", "0", ...: a slot named after the block that wrote it (``axes.slot_labels``)."""
        return slot_labels(self.n_layers)[self.source_slots]

    @property
    def target_labels(self) -> np.ndarray:
        return slot_labels(self.n_layers)[self.target_slots]

    def diagonal(self) -> list[tuple[int, int]]:
        """(row, column) of the cells whose target slot equals their source slot, by slot."""
        columns = {int(s): j for j, s in enumerate(self.target_slots)}
        return [(i, columns[int(s)]) for i, s in enumerate(self.source_slots) if int(s) in columns]


# ------------------------------------------------------------------------------ positions and slots


def default_slots(n_layers: int, count: int = DEFAULT_GRID) -> tuple[int, ...]:
    """``count`` slots evenly spaced from 0 (embeddings) to L (last block's output), both included."""
    return tuple(int(s) for s in np.unique(np.round(np.linspace(0, n_layers, min(count, n_layers + 1)))))


def resolve_slots(slots: Sequence[int], n_layers: int, what: str, model_name: str) -> tuple[int, ...]:
    """The request's slots (or the default grid), ascending; BadRequest for a slot the model lacks."""
    if not slots:
        return default_slots(n_layers)
    bad = [s for s in slots if not 0 <= int(s) <= n_layers]
    if bad:
        raise BadRequest(f"{what} {bad[0]} does not exist: {model_name} has slots 0 (embeddings) to {n_layers} "
                         "(the last block's output).")
    return tuple(sorted(int(s) for s in slots))


def resolve_position(position: int, length: int, what: str) -> int:
    """``position`` (negative: from the end) as an index into ``length`` tokens; BadRequest outside."""
    if not -length <= int(position) < length:
        raise BadRequest(f"The {what} {position} is outside the prompt: it has {length} tokens "
                         f"(positions 0 to {length - 1}, or -{length} to -1 from the end).")
    return int(position) % length


# ------------------------------------------------------------------------------ the patched runs


@contextlib.contextmanager
def _patched(model: LoadedModel, position: int, vectors: torch.Tensor, slots: Sequence[int]) -> Iterator[None]:
    """While inside: in a batch of ``len(slots)`` rows, row ``r``'s residual at slot ``slots[r]`` and
    ``position`` is replaced by ``vectors[r]`` (d_model,). One hook per slot that any row patches."""
    n_layers = model.info.n_layers
    rows_of: dict[int, list[int]] = {}
    for row, slot in enumerate(slots):
        rows_of.setdefault(int(slot), []).append(row)

    def edit_for(rows: list[int]):
        index = torch.tensor(rows)

        def edit(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            hidden[index.to(hidden.device), position] = vectors[index].to(hidden)
            return hidden

        return edit

    with contextlib.ExitStack() as stack:
        for slot, rows in rows_of.items():
            if slot < n_layers:  # the input of block ``slot``
                stack.enter_context(interventions.site_hook(model, slot, "resid", edit_for(rows)))
            else:  # slot L: the last block's output
                stack.enter_context(_output_hook(interventions.block(model, n_layers - 1), edit_for(rows)))
        yield


@contextlib.contextmanager
def _output_hook(module: torch.nn.Module, edit) -> Iterator[None]:
    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _rows_per_forward(model: LoadedModel, tokens_per_row: int) -> int:
    by_tokens = TOKEN_BUDGET // max(1, tokens_per_row)
    by_logits = LOGITS_BUDGET_BYTES // (4 * model.info.vocab_size)
    return max(1, min(by_tokens, by_logits))


def patched_generate(model: LoadedModel, target_ids: torch.Tensor, placeholder: int, vectors: torch.Tensor,
                     slots: Sequence[int], n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: row ``r`` reads ``target_ids`` (seq,) with ``vectors[r]`` written into slot ``slots[r]``
    at ``placeholder``, then continues greedily for ``n_tokens`` tokens, reusing the key/value cache of
    the patched prompt (the patched position stays patched for every later token).

    Returns the first next-token logits (row, vocab) float32 (the model's own output: soft-capped
    where the model caps) and the decoded ids (row, n_tokens) int64. Holds the model's lock."""
    rows = len(slots)
    batch = target_ids.unsqueeze(0).expand(rows, -1).to(model.device)
    hf = model.hf_model
    with model.lock, torch.no_grad():
        with _patched(model, placeholder, vectors, slots):
            out = hf(batch, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1].float()
        step = first.argmax(-1)
        decoded = [step]
        cache = out.past_key_values
        for _ in range(n_tokens - 1):
            out = hf(step[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            step = out.logits[:, -1].argmax(-1)
            decoded.append(step)
    return first.cpu(), torch.stack(decoded, dim=1).cpu()


def source_states(model: LoadedModel, source_ids: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot = L + 1, d_model) residual states at ``position`` of one source run, and the model's own
    next-token logits (vocab,) there."""
    trace = tracing.residual_stream(model, source_ids)
    return trace.resid[:, position].clone(), trace.logits[position].clone()


def next_token_logits(model: LoadedModel, source_ids: torch.Tensor, position: int, target_ids: torch.Tensor,
                      placeholder: int, slots: Sequence[int]) -> torch.Tensor:
    """(slot, vocab) float32: for each ``slots[i] = l``, the next-token logits at ``placeholder`` of
    ``target_ids`` (seq,) with the residual at slot ``l`` there replaced by the source's ``h_l`` at
    ``position`` of ``source_ids`` (seq,). Same slot on both sides; the model's own output logits
    (soft-capped where the model caps). Negative positions count from the end.

    The target is read up to the placeholder only (causal attention: later tokens cannot change it),
    in batches of slots."""
    n_layers = model.info.n_layers
    model.hf_model  # noqa: B018 (RemoteUnsupported on NDIF, before the source trace is sent)
    position = resolve_position(position, len(source_ids), "source position")
    placeholder = resolve_position(placeholder, len(target_ids), "placeholder position")
    slots = [int(s) for s in slots]
    if not slots or any(not 0 <= s <= n_layers for s in slots):
        raise BadRequest(f"slots must be between 0 and {n_layers} (and at least one), got {slots}.")
    states, _own = source_states(model, source_ids, position)
    prefix = target_ids[: placeholder + 1]
    per_forward = _rows_per_forward(model, len(prefix))
    out = []
    for start in range(0, len(slots), per_forward):
        chunk = slots[start:start + per_forward]
        first, _ = patched_generate(model, prefix, placeholder, states[chunk], chunk, 1)
        out.append(first)
    return torch.cat(out)


# ------------------------------------------------------------------------------ the analysis


def check(request: PatchscopeRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)
    prompts.check_text(request.target_prompt, settings)


def run(ctx, request: PatchscopeRequest, progress) -> PatchscopeResult:
    model = ctx.model
    model.hf_model  # noqa: B018 (a model on NDIF has no weights here for the hooks: RemoteUnsupported, before any trace)
    n_layers = model.info.n_layers
    source, target = ctx.encode(request.prompt), ctx.encode(request.target_prompt)
    position = resolve_position(request.source_position, len(source.ids), "source position")
    placeholder = resolve_position(request.placeholder, len(target.ids), "placeholder position")
    src_slots = resolve_slots(request.source_slots, n_layers, "Source slot", ctx.name)
    tgt_slots = resolve_slots(request.target_slots, n_layers, "Target slot", ctx.name)
    limit = model.info.max_positions
    if limit is not None and len(target.ids) + request.n_tokens > limit:
        raise BadRequest(f"The target prompt ({len(target.ids)} tokens) plus {request.n_tokens} decoded tokens "
                         f"exceed {ctx.name}'s {limit} positions.")
    k = min(request.top_k, model.info.vocab_size)

    progress(0.0, "Reading the source prompt's residual states")
    states, own_logits = source_states(model, source.ids, position)
    cells = [(i, j) for i in range(len(src_slots)) for j in range(len(tgt_slots))]
    per_forward = _rows_per_forward(model, len(target.ids) + request.n_tokens)
    top_ids = torch.zeros(len(cells), k, dtype=torch.int64)
    top_probs = torch.zeros(len(cells), k, dtype=torch.float32)
    first_prob = torch.zeros(len(cells), dtype=torch.float32)
    decoded_ids = torch.zeros(len(cells), request.n_tokens, dtype=torch.int64)
    for start in range(0, len(cells), per_forward):
        chunk = cells[start:start + per_forward]
        progress(start / len(cells), f"Patchscope cells {start + 1}-{start + len(chunk)} of {len(cells)}")
        vectors = states[[src_slots[i] for i, _ in chunk]]
        first, ids = patched_generate(model, target.ids, placeholder, vectors, [tgt_slots[j] for _, j in chunk],
                                      request.n_tokens)
        probs = torch.softmax(first.double(), dim=-1)
        top = probs.topk(k, dim=-1)
        rows = slice(start, start + len(chunk))
        top_ids[rows], top_probs[rows] = top.indices, top.values.float()
        first_prob[rows] = probs.gather(1, ids[:, :1])[:, 0].float()
        decoded_ids[rows] = ids
    progress(1.0, "Patchscope: all cells decoded")

    own = torch.softmax(own_logits.double(), dim=-1).topk(k)
    shape = (len(src_slots), len(tgt_slots))
    texts = ["".join(prompts.token_strings(model, row)) for row in decoded_ids]
    return PatchscopeResult(
        model_name=ctx.name,
        n_layers=n_layers,
        source_tokens=np.array(source.tokens, dtype=str),
        source_position=position,
        target_tokens=np.array(target.tokens, dtype=str),
        placeholder=placeholder,
        source_slots=np.array(src_slots, dtype=np.int64),
        target_slots=np.array(tgt_slots, dtype=np.int64),
        decoded=np.array(texts, dtype=str).reshape(shape),
        decoded_ids=decoded_ids.numpy().reshape(*shape, request.n_tokens),
        top_ids=top_ids.numpy().reshape(*shape, k),
        top_tokens=np.array(prompts.token_strings(model, top_ids.reshape(-1)), dtype=str).reshape(*shape, k),
        top_probs=top_probs.numpy().reshape(*shape, k),
        first_prob=first_prob.numpy().reshape(shape),
        own_top_ids=own.indices.numpy().astype(np.int64),
        own_top_tokens=np.array(prompts.token_strings(model, own.indices), dtype=str),
        own_top_probs=own.values.float().numpy(),
    )


def summary(result: PatchscopeResult) -> list[LayerSummary]:
    """The diagonal (target slot = source slot): the probability of the first decoded token per slot."""
    cells = result.diagonal()
    if not cells:
        return []
    slots = np.array([result.source_slots[i] for i, _ in cells], dtype=np.float64)
    values = np.array([result.first_prob[i, j] for i, j in cells], dtype=np.float64)
    labels = tuple(str(x) for x in slot_labels(result.n_layers)[slots.astype(int)])
    return [LayerSummary(result.model_name, NAME, "Patchscope first-token probability (target slot = source slot)",
                         slots / result.n_layers, values, labels)]


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Patchscope", Request=PatchscopeRequest, Result=PatchscopeResult,
    run=run, check=check, summary=summary,
)
