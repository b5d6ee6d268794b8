"""Fast activation patching: every site of every block, reusing the corrupted run.

Owns the fast path of ``analyses.activation_patching`` (the plain path, one full batched forward
per (site, block) in ``interventions.patch_positions`` / ``patch_heads``, stays the reference).
Patching block ``l``'s site at position ``p`` leaves the corrupted run unchanged before block
``l`` at every position and, in a causal model, at every position before ``p`` in every block. So
for each block ``l`` one batched run (chunked to a token budget) does all of the block's cells at
once, one batch row per cell:

    rows      resid / attn / mlp: one row per position whose clean and corrupted values differ;
              heads: one row per head (all positions of that head written in)
    p0        the first position any row changes; positions < p0 are never recomputed
    input     positions p0..seq-1 only (``position_ids`` p0..seq-1, so rotary / learned
              position embeddings see their true positions)
    prefix    the corrupted run's keys and values of positions < p0 in a transformers
              ``DynamicCache`` (full layers; the model's own mask code applies the causal and any
              sliding-window pattern to those absolute positions), one block's at a time
    blocks    blocks l.. are called one after another with the arguments the model's own forward
              gives them (masks, rotary tables, the cache), captured once per p0 from one probe
              row through ``base_model``; block l's input is the corrupted residual (recorded)
              with the row's clean value written in; nothing in the model is replaced
    output    the final norm of the last position, decoded to the two logits the metric reads
              (answer, wrong), soft-capped as the model does

Results equal the plain path up to float rounding (tests: 1e-5 in the metric ``m``). Rows at a
position ``p > p0`` recompute positions p0..p-1 on corrupted values: unchanged, as in the plain
path. Positions whose clean and corrupted values are equal are a no-op patch, scored exactly 0
(the plain path skips them too).

Safety: the fast path runs only for model types whose blocks run one after another (each block
called whole, whatever its inner topology: parallel GPT-NeoX / Phi / GPT-J blocks included),
decoded as ``soft_cap(W_U final_norm(h) + b_U)``, and whose forward takes ``position_ids`` and a
``DynamicCache`` (``FAST_MODEL_TYPES``: GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text,
OLMo 2, Phi, Phi-3, GPT-NeoX, GPT-J; each checked against the plain path by
tests/test_fast_patching.py or tests/test_architecture_matrix.py); any other model uses the plain
path. The probe row (the model's own forward after the cached prefix) and one
unpatched control row in every pass must reproduce the corrupted logit difference; if one does
not, ``CacheMismatch`` is raised and the caller falls back to the plain path, never returning a
different number silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench.interventions import HEADS, block, site_hook
from workbench.lenses import soft_cap
from workbench.models.loader import LoadedModel

# Model types whose forward, decoding and cache use were checked against the plain path.
FAST_MODEL_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2", "olmo2",
                              "phi", "phi3", "gpt_neox", "gptj"})
# Most (rows x keys) per batched run: bounds the expanded key/value prefix and attention sizes.
KV_TOKEN_BUDGET = 8192
CONTROL = "control"  # the unpatched row of every pass


class CacheMismatch(RuntimeError):
    """The unpatched control row did not reproduce the corrupted run: use the plain path."""


def supports(model: LoadedModel) -> bool:
    """Whether ``model`` may use the fast path (else the caller runs the plain one)."""
    return model.remote is None and model.info.model_type in FAST_MODEL_TYPES


@dataclass(frozen=True)
class Target:
    """What the metric ``m = (LD - LD_corr) / (LD_clean - LD_corr)`` needs."""

    answer_id: int
    wrong_id: int
    ld_clean: float
    ld_corrupted: float


@dataclass(frozen=True)
class CorruptedRun:
    """One forward of the corrupted prompt: site values, keys/values of every block, logits."""

    acts: dict  # {(site, block): (seq, width)}
    keys: list  # per block (1, kv_head, seq, head_dim), after rotary embeddings
    values: list  # per block (1, kv_head, seq, head_dim)
    logits: torch.Tensor  # (vocab,) last-position logits


def record_corrupted(model: LoadedModel, ids: torch.Tensor, sites: Sequence[str]) -> CorruptedRun:
    """Forward ``ids`` (seq,) once, keeping the site values and every block's keys and values."""
    from transformers import DynamicCache

    sites = tuple(dict.fromkeys(("resid", *sites)))  # the residual is where every pass starts
    found: dict[tuple[str, int], torch.Tensor] = {}
    cache = DynamicCache()  # no config: every layer keeps all positions (no sliding-window trim)
    with model.lock, torch.no_grad(), contextlib.ExitStack() as stack:
        for site in sites:
            for layer in range(model.info.n_layers):
                stack.enter_context(site_hook(model, layer, site, _keep(found, (site, layer))))
        out = model.hf_model(
            ids.unsqueeze(0).to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1
        )
    layers = cache.layers
    if len(layers) != model.info.n_layers:
        raise CacheMismatch(f"the cache holds {len(layers)} layers, the model has {model.info.n_layers} blocks")
    return CorruptedRun(
        acts={k: v[0].detach().clone() for k, v in found.items()},
        keys=[layer.keys for layer in layers],
        values=[layer.values for layer in layers],
        logits=out.logits[0, -1],
    )


def _keep(found: dict, key) -> Callable[[torch.Tensor], None]:
    def keep(value: torch.Tensor) -> None:
        found[key] = value

    return keep


# ---------------------------------------------------------------------- the plan of one block


@dataclass(frozen=True)
class _BlockPlan:
    """The rows of one block's passes: (site, position) or (HEADS, head), and where they start."""

    layer: int
    rows: list  # [(site, index)]
    start: int  # p0: the first position any row changes


def _plan(layer: int, clean_acts: dict, run: CorruptedRun, sites: Sequence[str], n_heads: int) -> _BlockPlan | None:
    rows: list[tuple[str, int]] = []
    starts: list[int] = []
    for site in sites:
        differs = (clean_acts[(site, layer)] != run.acts[(site, layer)]).any(-1).nonzero().flatten().tolist()
        if not differs:
            continue  # a no-op patch everywhere: exactly 0
        starts.append(differs[0])
        if site == HEADS:
            rows += [(HEADS, head) for head in range(n_heads)]
        else:
            rows += [(site, position) for position in differs]
    return _BlockPlan(layer, rows, min(starts)) if rows else None


# ---------------------------------------------------------------------- running the passes


def patch_all(
    model: LoadedModel,
    corrupted_ids: torch.Tensor,
    clean_acts: dict,
    run: CorruptedRun,
    target: Target,
    sites: Sequence[str],
    progress: Callable[[float | None, str], None],
    on_block: Callable[[dict, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The metric ``m`` of every cell: {site: (block, seq)} and {HEADS: (block, head)} float32.

    ``progress(fraction, message)`` is called after each block (the fraction weighs each block by
    the blocks it runs); it may raise to cancel. ``on_block(scores, layer)`` sees the scores after
    each block (rows after ``layer`` not run yet). Raises ``CacheMismatch`` if a control row does
    not reproduce the corrupted run.
    """
    n_layers, n_heads, seq = model.info.n_layers, model.info.n_heads, len(corrupted_ids)
    scores = {site: np.zeros((n_layers, n_heads if site == HEADS else seq), np.float32) for site in sites}
    calls: dict[int, _BlockCalls] = {}  # by first position
    total = n_layers * (n_layers + 1) / 2
    done = 0.0
    for layer in range(n_layers):
        plan = _plan(layer, clean_acts, run, sites, n_heads)
        if plan is not None:
            if plan.start not in calls:
                calls[plan.start] = _capture_calls(model, corrupted_ids, run, target, plan.start)
            for rows in _chunks(plan.rows, seq):
                m = _run_pass(model, clean_acts, run, target, plan, rows, calls[plan.start])
                for (site, index), value in zip(rows, m[:-1], strict=True):
                    scores[site][layer, index] = value
        done += n_layers - layer
        progress(done / total, f"Activation patching: block {layer} ({layer + 1}/{n_layers})")
        if on_block is not None:
            on_block(scores, layer)
    return scores


@dataclass(frozen=True)
class _BlockCalls:
    """How the model calls each block on positions ``start..seq-1`` after a cached prefix: the
    arguments besides the hidden states (masks, rotary tables, position ids, the cache), captured
    once from the model's own forward so that no architecture's call is rebuilt here."""

    start: int
    calls: list  # per block: (args after the hidden states, kwargs, hidden states passed by keyword)
    cache: object  # the probe's cache object, replaced by each pass's own


def _capture_calls(model, corrupted_ids, run: CorruptedRun, target: Target, start: int) -> _BlockCalls:
    """One row of the corrupted suffix through the model's own forward, recording every block's
    call; its output is checked against the corrupted run (a control of the whole path)."""
    n_layers = model.info.n_layers
    calls: list = [None] * n_layers
    ids = corrupted_ids[start:].to(model.device).unsqueeze(0)
    cache, kwargs = None, {"use_cache": False}
    if start > 0:
        cache = _prefix_cache(run, start, rows=1)
        positions = torch.arange(start, len(corrupted_ids), device=model.device).unsqueeze(0)
        kwargs = dict(past_key_values=cache, position_ids=positions, use_cache=True)

    def recorder(layer):
        def hook(_module, args, kw):
            keyword = not args
            calls[layer] = (tuple(args[1:]), {k: v for k, v in kw.items() if k != "hidden_states"}, keyword)

        return hook

    with model.lock, torch.no_grad(), contextlib.ExitStack() as stack:
        for layer in range(n_layers):
            handle = block(model, layer).register_forward_pre_hook(recorder(layer), with_kwargs=True)
            stack.callback(handle.remove)
        hidden = model.hf_model.base_model(input_ids=ids, **kwargs).last_hidden_state[:, -1]
        _check_control(float(_logit_diffs(model, hidden, target)[0]), target, 0)
    if any(call is None for call in calls):
        raise CacheMismatch("the model's forward did not call every block")
    return _BlockCalls(start, calls, cache)


def _chunks(rows: list, seq: int) -> Iterator[list]:
    per_pass = max(1, KV_TOKEN_BUDGET // seq - 1)  # one slot kept for the control row
    for begin in range(0, len(rows), per_pass):
        yield rows[begin : begin + per_pass]


def _run_pass(model, clean_acts, run, target: Target, plan: _BlockPlan, rows: list, calls: _BlockCalls) -> np.ndarray:
    """m of each row, then of the control row (checked against the corrupted run): blocks
    ``plan.layer..`` on positions ``plan.start..``, called as the model's forward calls them."""
    rows = [*rows, (CONTROL, -1)]
    layer, start = plan.layer, plan.start
    cache = _empty_cache() if start > 0 else None

    def swap(value):
        return cache if value is calls.cache and value is not None else value

    with model.lock, torch.no_grad(), contextlib.ExitStack() as stack:
        for site, edit in _edits(model, clean_acts, layer, start, rows).items():
            stack.enter_context(site_hook(model, layer, site, edit))
        hidden = _block_input(clean_acts, run, layer, start, rows)
        for index in range(layer, model.info.n_layers):
            args, kwargs, keyword = calls.calls[index]
            args, kwargs = tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}
            if cache is not None:  # this block's prefix, one copy per row, only while it runs
                _fill(cache, run, index, start, len(rows))
            module = block(model, index)
            out = module(*args, hidden_states=hidden, **kwargs) if keyword else module(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
            if cache is not None:
                cache.layers[index].reset()
        final = model.module(model.spec.final_norm)(hidden[:, -1:])[:, -1]
        ld = _logit_diffs(model, final, target)
    m = (ld - target.ld_corrupted) / (target.ld_clean - target.ld_corrupted)
    _check_control(float(ld[-1]), target, layer)
    return m.float().cpu().numpy()


def _check_control(ld: float, target: Target, layer: int) -> None:
    tolerance = 1e-5 * max(1.0, abs(target.ld_clean - target.ld_corrupted), abs(target.ld_corrupted))
    if not abs(ld - target.ld_corrupted) <= tolerance:
        raise CacheMismatch(
            f"the unpatched run from block {layer} gives a logit difference of {ld:.8g}, the corrupted "
            f"run {target.ld_corrupted:.8g}"
        )


def _empty_cache():
    from transformers import DynamicCache

    return DynamicCache()  # no config: full layers, every position kept (sliding windows are in the masks)


def _fill(cache, run: CorruptedRun, index: int, start: int, rows: int) -> None:
    """Put positions < ``start`` of the corrupted run's keys/values of block ``index`` into
    ``cache``, repeated for ``rows`` batch rows."""
    keys, values = run.keys[index][:, :, :start], run.values[index][:, :, :start]
    cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)


def _prefix_cache(run: CorruptedRun, start: int, rows: int):
    """A ``DynamicCache`` holding positions < ``start`` of the corrupted run for every block."""
    cache = _empty_cache()
    for index in range(len(run.keys)):
        _fill(cache, run, index, start, rows)
    return cache


def _block_input(clean_acts: dict, run: CorruptedRun, layer: int, start: int, rows: list) -> torch.Tensor:
    """(row, seq - start, d_model): the corrupted residual before block ``layer``, with each
    resid row's clean value written in at its position."""
    corrupted = run.acts[("resid", layer)][start:]
    hidden = corrupted.unsqueeze(0).expand(len(rows), -1, -1).clone()
    resid_rows = [(row, index) for row, (site, index) in enumerate(rows) if site == "resid"]
    return _write_positions(hidden, resid_rows, clean_acts.get(("resid", layer)), start)


def _edits(model, clean_acts: dict, layer: int, start: int, rows: list) -> dict:
    """{site: edit} for ``interventions.site_hook``: each attn / mlp / heads row's clean value
    written into its site of block ``layer`` (positions ``start..``)."""
    by_site: dict[str, list[tuple[int, int]]] = {}
    for row, (site, index) in enumerate(rows):
        by_site.setdefault(site, []).append((row, index))
    edits = {}
    for site in ("attn", "mlp"):
        if by_site.get(site):
            edits[site] = _position_writer(by_site[site], clean_acts[(site, layer)], start)
    if by_site.get(HEADS):
        edits[HEADS] = _head_writer(by_site[HEADS], clean_acts[(HEADS, layer)], start, model.info.n_heads)
    return edits


def _write_positions(value: torch.Tensor, rows: list, source: torch.Tensor | None, start: int) -> torch.Tensor:
    if rows:
        index = torch.tensor(rows, device=value.device)
        value[index[:, 0], index[:, 1] - start] = source[index[:, 1]].to(value)
    return value


def _position_writer(rows: list, source: torch.Tensor, start: int) -> Callable:
    def write(value: torch.Tensor) -> torch.Tensor:
        return _write_positions(value.clone(), rows, source, start)

    return write


def _head_writer(rows: list, source: torch.Tensor, start: int, n_heads: int) -> Callable:
    head_dim = source.shape[-1] // n_heads

    def write(value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        for row, head in rows:
            cols = slice(head * head_dim, (head + 1) * head_dim)
            value[row, :, cols] = source[start:, cols].to(value)
        return value

    return write


def _logit_diffs(model: LoadedModel, hidden: torch.Tensor, target: Target) -> torch.Tensor:
    """(row,) float64 logit(answer) - logit(wrong) from final hidden states (row, d_model)."""
    unembed = model.module(model.spec.unembed)
    ids = torch.tensor([target.answer_id, target.wrong_id], device=hidden.device)
    bias = unembed.bias[ids] if getattr(unembed, "bias", None) is not None else None
    logits = soft_cap(torch.nn.functional.linear(hidden, unembed.weight[ids], bias), model.info.logit_softcap)
    logits = logits.double()
    return (logits[:, 0] - logits[:, 1]).cpu()
