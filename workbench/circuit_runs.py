"""Split-input runs over a task's pair batch: every reader reads its own copy of the residual stream.

Owns the forward pass that circuit analyses need on top of ``circuit_graph``'s node and edge vocabulary
(read its docstring for what the nodes, edges and edge ablation are), after Conmy et al. (2023, ACDC),
Syed, Rager & Conmy (2023, EAP) and Hanna, Pezzelle & Belinkov (2024, EAP-IG):

* ``split_forward``: one forward of a ``circuit_tasks.PairBatch`` (or of several circuits' copies of it)
  where each reader ``v`` (every head, every MLP, the logits) reads ``input_v = shared input + delta_v``.
  A head reads through its own copy of the block: the batch is widened to ``rows x n_heads`` copies,
  copy ``k`` carries head ``k``'s input, the attention norm is applied to each copy's own pre-norm
  input, and at the output projection's input only head ``k``'s slice of copy ``k`` is kept (the
  others are masked), so the projection's bias is added once and a post-attention norm (Gemma 2/3,
  OLMo 2) sees the sum of the heads' shares. The MLP runs on copy 0 only (copies are equal outside the
  attention), and the unembedding reads each pair's last real token of copy 0. Every writer's output
  ``a_u`` (per position) is recorded: ``embed`` is the block-0 input, a head's output is its slice of
  the projection input times its columns of the projection (times the post-norm's per-position factor
  ``w / rms(o)`` where there is one), an MLP's is what the block adds. Module roles come from the
  adapter (``attn_norm``, ``attn_out``, ``attn_post_norm``, ``pre_mlp_norm``, ``mlp_post_norm``).
  Invariants (tests/test_circuit_runs.py, every tiny architecture): all deltas zero gives the plain
  model's logits, and each reader's input is the sum of its writers' outputs plus the projection biases.
* ``ablate``: edge ablation exactly as ``circuit_graph`` defines it. The clean prompt is run; reader
  ``v`` gets ``delta_v = -sum over writers u with (u, v) not kept of (a_u(run) - a_u(source))``, with
  ``a_u(run)`` the output of ``u`` in this very run (so upstream ablations propagate). Many circuits run in
  one forward (rows = circuits x pairs x heads), in chunks of at most ``max_rows`` circuit-pair rows.
  ``source="corrupted"``: each pair's corrupted run; ``source="mean"``: the dataset mean, per position,
  of every writer's output over the pairs' corrupted runs (pairs shorter than a position do not count).
  Keeping every edge is the clean run (M = 1); keeping none with the corrupted source is the corrupted
  run (M = 0).
* ``faithfulness_curve``, ``area``, ``smallest_recovering``: circuits made of the top-n edges by
  ``|score|`` (a large negative score matters as much as a large positive one), each scored by a real
  ablation run.

Plain PyTorch hooks on the HF modules, like ``interventions``, and under ``interventions.lrp_rules``
(which selects eager attention), so RelP's rules reach the norms this module re-applies. Batch rows
are widened inside the run, so this runs locally; ``circuit_trace`` is the same run as nnsight traces
(ablation with the source computed in the same forward), which run on NDIF.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench.circuit_graph import Graph
from workbench.circuit_tasks import PairBatch
from workbench.errors import BadRequest
from workbench.interventions import Rules, block, final_logits, lrp_rules
from workbench.models.loader import LoadedModel

SOURCES = ("corrupted", "mean")
NO_RULES = Rules()  # plain gradients
Progress = Callable[[float, str], None]


def _no_progress(_fraction: float, _message: str) -> None:
    return None


# ---------------------------------------------------------------------- indices


def writer_index(graph: Graph, kind: str, layer: int = -1, head: int = 0) -> int:
    """Position of a writer in ``graph.writers`` (= its index in ``graph.nodes``)."""
    if kind == "embed":
        return 0
    base = 1 + layer * (graph.n_heads + 1)
    return base + (head if kind == "head" else graph.n_heads)


def reader_index(graph: Graph, kind: str, layer: int = -1, head: int = 0) -> int:
    """Position of a reader in ``graph.readers`` (its index in ``graph.nodes`` is one more)."""
    if kind == "logits":
        return graph.n_layers * (graph.n_heads + 1)
    return layer * (graph.n_heads + 1) + (head if kind == "head" else graph.n_heads)


def _writers_before(graph: Graph, layer: int, with_heads_of_layer: bool = False) -> int:
    """How many writers (a prefix of ``graph.writers``) lie upstream of block ``layer``'s readers."""
    n = 1 + layer * (graph.n_heads + 1)
    return n + graph.n_heads if with_heads_of_layer else n


# ---------------------------------------------------------------------- module helpers


def _linear_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, in) weight and bias of a linear layer (``nn.Linear`` or GPT-2's transposed ``Conv1D``)."""
    if isinstance(module, torch.nn.Linear):
        return module.weight, module.bias
    if hasattr(module, "nf") and module.weight.shape[-1] == module.nf:  # transformers Conv1D
        return module.weight.t(), module.bias
    raise TypeError(f"{type(module).__name__} is not a linear projection")


def _rms_factor(norm: torch.nn.Module, x: torch.Tensor, offset: float) -> torch.Tensor:
    """Per-position factor ``(offset + w) / rms(x)`` of an RMS norm, so ``norm(x) = x * factor``."""
    if isinstance(norm, torch.nn.LayerNorm):
        raise NotImplementedError("a centring post-attention norm cannot be split into head shares")
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    xf = x.float()
    inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return ((norm.weight.float() + offset) * inv).to(x.dtype)


def _first_arg(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_first(args, kwargs, new):
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _output_value(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_output(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


# ---------------------------------------------------------------------- the split forward


class Deltas:
    """What each reader adds to its input; ``None``: nothing. Shapes: heads (rows, heads, seq, d),
    an MLP and the logits (rows, seq, d). ``run`` is the state of the run in progress."""

    def heads(self, layer: int, run: _RunState) -> torch.Tensor | None:
        return None

    def mlp(self, layer: int, run: _RunState) -> torch.Tensor | None:
        return None

    def logits(self, run: _RunState) -> torch.Tensor | None:
        return None


@dataclass
class FixedDeltas(Deltas):
    """Given tensors (zero tensors requiring grad for gradient passes, or a finite perturbation)."""

    head: dict  # layer -> (rows, heads, seq, d)
    mlp_: dict  # layer -> (rows, seq, d)
    logit: torch.Tensor | None = None

    def heads(self, layer, run):
        return self.head.get(layer)

    def mlp(self, layer, run):
        return self.mlp_.get(layer)

    def logits(self, run):
        return self.logit


@dataclass
class SplitRun:
    """What one split forward recorded (``rows`` = circuits x pairs, circuit-major)."""

    logits: torch.Tensor  # (rows, vocab) at each pair's last real token, soft-capped as the model does
    writes: torch.Tensor | None  # (writer, rows, seq, d) every writer's output a_u, when recorded
    biases: torch.Tensor  # (n_layers, rows or 1, seq or 1, d) what each block adds besides its nodes
    inputs: dict  # reader index -> (rows, seq, d), when asked for (tests)
    attn_writes: list  # per block: (rows, seq, d) what the attention adds to the residual (copy 0)
    mlp_writes: list  # per block: (rows, seq, d)


class _RunState:
    def __init__(self, model: LoadedModel, graph: Graph, rows: int, seq: int, record: bool,
                 on_write: Callable[[int, torch.Tensor], None] | None):
        self.model, self.graph, self.rows, self.k = model, graph, rows, graph.n_heads
        self.record, self.on_write = record, on_write
        d = model.info.d_model
        dtype = next(model.hf_model.parameters()).dtype
        device = model.device
        self.writes = torch.zeros((len(graph.writers), rows, seq, d), dtype=dtype, device=device) if record else None
        self.biases = torch.zeros((graph.n_layers, 1, 1, d), dtype=dtype, device=device)
        self.x: torch.Tensor | None = None  # block input, (rows * k, seq, d)
        self.attn_write: torch.Tensor | None = None
        self.heads: torch.Tensor | None = None  # (rows, heads, seq, d) head outputs before a post-norm
        self.o_bias: torch.Tensor | None = None
        self.inputs: dict = {}
        self.attn_writes: list = []
        self.mlp_writes: list = []
        self.raw_logits: torch.Tensor | None = None

    def copy0(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.rows, self.k, *x.shape[1:])[:, 0]

    def widen(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(x.shape[0], self.k, *x.shape[1:]).reshape(-1, *x.shape[1:]).contiguous()

    def write(self, index: int, value: torch.Tensor) -> None:
        if self.on_write is not None:
            self.on_write(index, value)
        if self.writes is not None:
            self.writes[index] = value.detach()


def _norm_call(blk: torch.nn.Module, name: str | None, x: torch.Tensor) -> torch.Tensor:
    return x if name is None else blk.get_submodule(name)(x)


@contextlib.contextmanager
def _split_hooks(model: LoadedModel, state: _RunState, deltas: Deltas, probes: dict | None,
                 x0: torch.Tensor | None, last: torch.Tensor, keep_inputs: bool):
    spec, graph, n_heads = model.spec, state.graph, state.graph.n_heads
    offset = spec.norm_weight_offset
    handles = []
    probes = probes or {}

    def add(handle):
        handles.append(handle)

    for layer in range(graph.n_layers):
        blk = block(model, layer)
        attn = blk.get_submodule(spec.attn)
        o_proj = attn.get_submodule(spec.attn_out)
        mlp = blk.get_submodule(spec.mlp)

        def block_pre(_m, args, kwargs, layer=layer):
            x = _first_arg(args, kwargs)
            changed = False
            if layer == 0:
                if x0 is not None:
                    x, changed = state.widen(x0.to(x)), True
                state.write(0, state.copy0(x))
                if "embed" in probes:
                    x, changed = x + state.widen(probes["embed"]), True
            state.x = x
            return _replace_first(args, kwargs, x) if changed else None

        def attn_pre(_m, args, kwargs, layer=layer, blk=blk):
            delta = deltas.heads(layer, state)
            x = state.x
            if delta is not None:
                x = (x.view(state.rows, n_heads, *x.shape[1:]) + delta.to(x)).reshape(x.shape)
            if keep_inputs:
                per_head = x.view(state.rows, n_heads, *x.shape[1:])
                for h in range(n_heads):
                    state.inputs[reader_index(graph, "head", layer, h)] = per_head[:, h].detach()
            if delta is None and spec.attn_norm is not None and not keep_inputs:
                return None  # the block's own norm call already gave this input
            return _replace_first(args, kwargs, _norm_call(blk, spec.attn_norm, x))

        def o_pre(_m, args, kwargs):
            z = _first_arg(args, kwargs)  # (rows * k, seq, heads * head_dim)
            seq = z.shape[1]
            z = z.view(state.rows, n_heads, seq, n_heads, -1)
            eye = torch.eye(n_heads, dtype=z.dtype, device=z.device).view(1, n_heads, 1, n_heads, 1)
            combined = (z * eye).sum(1)  # (rows, seq, heads, head_dim): head k from copy k
            weight, bias = _linear_weight(_m)
            w = weight.view(weight.shape[0], n_heads, -1)
            state.heads = torch.einsum("nshe,dhe->nhsd", combined.detach(), w.detach())
            state.o_bias = None if bias is None else bias.detach()
            return _replace_first(args, kwargs, state.widen(combined.reshape(state.rows, seq, -1)))

        def attention_written(value: torch.Tensor, layer: int, factor: torch.Tensor | None) -> torch.Tensor:
            heads = state.heads if factor is None else state.heads * state.copy0(factor).unsqueeze(1)
            for h in range(n_heads):
                state.write(writer_index(graph, "head", layer, h), heads[:, h])
            if state.o_bias is not None:
                share = state.o_bias if factor is None else state.o_bias * state.copy0(factor)
                if factor is None:
                    state.biases[layer, 0, 0] = share
                else:  # per run and position: widen the stored biases once
                    if state.biases.shape[1] == 1:
                        state.biases = state.biases.expand(-1, state.rows, heads.shape[2], -1).clone()
                    state.biases[layer] = share
            if f"attn{layer}" in probes:
                value = value + state.widen(probes[f"attn{layer}"])
            state.attn_write = value
            state.attn_writes.append(state.copy0(value).detach())
            return value

        def o_post(_m, _args, output, layer=layer):
            if spec.attn_post_norm is not None:
                return None
            value = attention_written(_output_value(output), layer, None)
            return _replace_output(output, value)

        add(blk.register_forward_pre_hook(block_pre, with_kwargs=True))
        add(attn.register_forward_pre_hook(attn_pre, with_kwargs=True))
        add(o_proj.register_forward_pre_hook(o_pre, with_kwargs=True))
        add(o_proj.register_forward_hook(o_post))
        if spec.attn_post_norm is not None:
            post = blk.get_submodule(spec.attn_post_norm)

            def post_hook(module, args, output, layer=layer):
                factor = _rms_factor(module, args[0], offset)
                return attention_written(output, layer, factor)

            add(post.register_forward_hook(post_hook))

        def mlp_pre(_m, args, kwargs, layer=layer, blk=blk):
            source = state.x + state.attn_write if spec.sequential else state.x
            x = state.copy0(source)
            delta = deltas.mlp(layer, state)
            if delta is not None:
                x = x + delta.to(x)
            if keep_inputs:
                state.inputs[reader_index(graph, "mlp", layer)] = x.detach()
            return _replace_first(args, kwargs, _norm_call(blk, spec.pre_mlp_norm, x))

        def mlp_written(value: torch.Tensor, layer: int) -> torch.Tensor:
            state.write(writer_index(graph, "mlp", layer), value)
            if f"mlp{layer}" in probes:
                value = value + probes[f"mlp{layer}"]
            state.mlp_writes.append(value.detach())
            return value

        def mlp_post(_m, _args, output, layer=layer):
            value = _output_value(output)  # (rows, seq, d): copy 0 only
            if spec.mlp_post_norm is None:
                value = mlp_written(value, layer)
            return _replace_output(output, state.widen(value))

        add(mlp.register_forward_pre_hook(mlp_pre, with_kwargs=True))
        add(mlp.register_forward_hook(mlp_post))
        if spec.mlp_post_norm is not None:

            mlp_norm = blk.get_submodule(spec.mlp_post_norm)

            def mlp_norm_post(_m, args, output, layer=layer):
                value = mlp_written(state.copy0(output), layer)
                return state.widen(value)

            add(mlp_norm.register_forward_hook(mlp_norm_post))

    final = model.module(spec.final_norm)
    unembed = model.module(spec.unembed)

    def final_pre(_m, args):
        x = args[0]
        delta = deltas.logits(state)
        if delta is not None:
            x = x + state.widen(delta.to(x))
        if keep_inputs:
            state.inputs[reader_index(graph, "logits")] = state.copy0(x).detach()
        return (x, *args[1:]) if delta is not None else None

    def unembed_pre(_m, args):
        h = state.copy0(args[0])
        return (h[torch.arange(state.rows), last].unsqueeze(1), *args[1:])

    def unembed_post(_m, _args, output):
        state.raw_logits = output[:, 0]

    add(final.register_forward_pre_hook(final_pre))
    add(unembed.register_forward_pre_hook(unembed_pre))
    add(unembed.register_forward_hook(unembed_post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def split_forward(
    model: LoadedModel,
    graph: Graph,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    last: torch.Tensor,
    *,
    deltas: Deltas | None = None,
    probes: dict | None = None,
    x0: torch.Tensor | None = None,
    rules: Rules = NO_RULES,
    record: bool = True,
    keep_inputs: bool = False,
    on_write: Callable[[int, torch.Tensor], None] | None = None,
) -> SplitRun:
    """One split-input forward of ``ids`` (rows, seq) (right-padded, ``last`` each row's last real token).

    ``deltas``: what each reader adds to its input (default nothing: the plain model's numbers).
    ``probes``: zero tensors (rows, seq, d) added to writers' outputs (``"embed"``, ``"attn{l}"`` the
    whole attention write of block l, ``"mlp{l}"``), whose gradients are ``dM / d a_u``. ``x0``
    replaces the block-0 input (the ``embed`` writer: integrated gradients' interpolation). ``rules``:
    RelP rules to install (none: plain gradients; eager attention either way). Gradients flow when
    the caller enables them; ``writes`` are recorded detached.
    """
    rows, seq = ids.shape
    state = _RunState(model, graph, rows, seq, record, on_write)
    deltas = deltas or Deltas()
    wide_ids = ids.repeat_interleave(graph.n_heads, 0).to(model.device)
    wide_mask = attention_mask.repeat_interleave(graph.n_heads, 0).to(model.device)
    with model.lock, contextlib.ExitStack() as stack:
        stack.enter_context(lrp_rules(model, rules))
        stack.enter_context(_split_hooks(model, state, deltas, probes, x0, last.to(model.device), keep_inputs))
        model.hf_model(input_ids=wide_ids, attention_mask=wide_mask, use_cache=False)
    logits = final_logits(model, state.raw_logits, rules)
    return SplitRun(logits, state.writes, state.biases, state.inputs, state.attn_writes, state.mlp_writes)


# ---------------------------------------------------------------------- ablation


def _logit_diffs(logits: torch.Tensor, batch: PairBatch, circuits: int) -> torch.Tensor:
    """(circuits * pairs, vocab) -> (circuits, pairs) LD."""
    answer = batch.answer_ids.repeat(circuits).to(logits.device)
    wrong = batch.wrong_ids.repeat(circuits).to(logits.device)
    rows = torch.arange(len(answer), device=logits.device)
    return (logits[rows, answer] - logits[rows, wrong]).view(circuits, len(batch))


def source_writes(model: LoadedModel, batch: PairBatch, graph: Graph, source: str) -> torch.Tensor:
    """(writer, pairs or 1, seq, d): the writers' outputs edges outside a circuit carry (module docstring)."""
    if source not in SOURCES:
        raise BadRequest(f"Unknown ablation source {source!r}; choose one of: {', '.join(SOURCES)}.")
    with torch.no_grad():
        run = split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last)
    writes = run.writes
    if source == "corrupted":
        return writes
    mask = batch.attention_mask.to(writes).view(1, len(batch), -1, 1)
    count = mask.sum(1, keepdim=True)
    return (writes * mask).sum(1, keepdim=True) / count.clamp(min=1)


class _AblationDeltas(Deltas):
    """``delta_v = -sum over writers u not kept for v of (a_u(run) - a_u(source))`` (circuit_graph)."""

    def __init__(self, graph: Graph, dropped: torch.Tensor, source: torch.Tensor, circuits: int, pairs: int):
        self.graph, self.dropped, self.source = graph, dropped, source  # dropped: (circuits, writer, reader)
        self.circuits, self.pairs = circuits, pairs
        self.diffs: torch.Tensor | None = None  # (writer, circuits, pairs, seq, d)

    def on_write(self, index: int, value: torch.Tensor) -> None:
        if self.diffs is None:
            shape = (len(self.graph.writers), self.circuits, self.pairs, *value.shape[1:])
            self.diffs = torch.zeros(shape, dtype=value.dtype, device=value.device)
        value = value.reshape(self.circuits, self.pairs, *value.shape[1:])
        self.diffs[index] = value - self.source[index].to(value)

    def _delta(self, n_writers: int, readers: list[int]) -> torch.Tensor:
        weights = self.dropped[:, :n_writers, readers].to(self.diffs)  # (c, w, r)
        delta = -torch.einsum("cwr,wcbsd->cbrsd", weights, self.diffs[:n_writers])
        return delta.reshape(self.circuits * self.pairs, len(readers), *delta.shape[3:])

    def heads(self, layer, run):
        readers = [reader_index(self.graph, "head", layer, h) for h in range(self.graph.n_heads)]
        return self._delta(_writers_before(self.graph, layer), readers)

    def mlp(self, layer, run):
        n = _writers_before(self.graph, layer, with_heads_of_layer=not self.graph.parallel)
        return self._delta(n, [reader_index(self.graph, "mlp", layer)])[:, 0]

    def logits(self, run):
        return self._delta(len(self.graph.writers), [reader_index(self.graph, "logits")])[:, 0]


def _dropped(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """(circuits, edges) bool keep -> (circuits, writer, reader) float: 1 where an edge exists, not kept."""
    out = torch.zeros((keep.shape[0], len(graph.writers), len(graph.readers)))
    writers = torch.as_tensor(graph.edges[:, 0])
    readers = torch.as_tensor(graph.edges[:, 1]) - 1
    out[:, writers, readers] = (~keep).float()
    return out


def ablate(
    model: LoadedModel,
    batch: PairBatch,
    graph: Graph,
    keep: np.ndarray | torch.Tensor,
    source: str = "corrupted",
    *,
    sources: torch.Tensor | None = None,
    max_rows: int = 64,
    progress: Progress = _no_progress,
) -> torch.Tensor:
    """Per-pair LD with every edge outside the circuit ablated; ``keep`` (edges,) bool gives (pairs,),
    (circuits, edges) gives (circuits, pairs). ``sources``: precomputed ``source_writes`` (reused by
    ``faithfulness_curve``). Circuits run ``max(1, max_rows // pairs)`` per forward."""
    keep = torch.as_tensor(np.asarray(keep), dtype=torch.bool)
    single = keep.dim() == 1
    keep = keep.view(-1, keep.shape[-1])
    if keep.shape[1] != len(graph.edges):
        raise BadRequest(f"The circuit mask has {keep.shape[1]} entries; the graph has {len(graph.edges)} edges.")
    if sources is None:
        sources = source_writes(model, batch, graph, source)
    pairs = len(batch)
    per_forward = max(1, max_rows // pairs)
    out = []
    for start in range(0, keep.shape[0], per_forward):
        chunk = keep[start : start + per_forward]
        circuits = chunk.shape[0]
        deltas = _AblationDeltas(graph, _dropped(graph, chunk), sources, circuits, pairs)
        with torch.no_grad():
            run = split_forward(model, graph, batch.clean_ids.repeat(circuits, 1),
                                batch.attention_mask.repeat(circuits, 1), batch.last.repeat(circuits),
                                deltas=deltas, record=False, on_write=deltas.on_write)
        out.append(_logit_diffs(run.logits.double(), batch, circuits))
        done = start + circuits
        progress(min(1.0, done / keep.shape[0]), f"Ablation runs: {done} of {keep.shape[0]} circuits")
    lds = torch.cat(out)
    return lds[0] if single else lds


# ---------------------------------------------------------------------- faithfulness


GAP_MESSAGE = ("The clean and corrupted prompts give the same total logit difference, so the task metric is "
               "undefined; the corruption must change the answer.")


@dataclass(frozen=True)
class Curve:
    sizes: np.ndarray  # (k,) circuit sizes in edges
    metric: np.ndarray  # (k,) task metric M of each circuit
    ld_clean: np.ndarray  # (pairs,)
    ld_corrupted: np.ndarray  # (pairs,)


def top_edges(scores: np.ndarray, n: int) -> np.ndarray:
    """Bool mask of the ``n`` edges with the largest ``|score|`` (ties: lower edge index first)."""
    order = np.argsort(-np.abs(np.asarray(scores, dtype=np.float64)), kind="stable")
    keep = np.zeros(len(order), dtype=bool)
    keep[order[:n]] = True
    return keep


def faithfulness_curve(
    model: LoadedModel,
    batch: PairBatch,
    graph: Graph,
    scores: np.ndarray,
    sizes: Sequence[int],
    source: str = "corrupted",
    *,
    max_rows: int = 64,
    progress: Progress = _no_progress,
) -> Curve:
    """M of the circuit made of the top-n edges by |score| for each n in ``sizes`` (real ablation runs).

    M = sum(LD - LD_corr) / sum(LD_clean - LD_corr) with LD_clean and LD_corr the split runs of the clean
    and corrupted prompts (``circuit_tasks.task_metric``), so the full circuit gives 1 and, with the
    corrupted source, the empty one 0."""
    scores, sizes = curve_sizes(graph, scores, sizes)
    sources = source_writes(model, batch, graph, source)
    with torch.no_grad():
        clean = split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last, record=False)
        corrupted = split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last, record=False)
    ld_clean = _logit_diffs(clean.logits.double(), batch, 1)[0]
    ld_corr = _logit_diffs(corrupted.logits.double(), batch, 1)[0]
    keep = np.stack([top_edges(scores, int(n)) for n in sizes])
    lds = ablate(model, batch, graph, keep, source, sources=sources, max_rows=max_rows, progress=progress)
    return curve_from_diffs(sizes, lds, ld_clean, ld_corr)


def curve_sizes(graph: Graph, scores: np.ndarray, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The scores checked to be one per edge, and the circuit sizes clipped to [0, edges], sorted, unique."""
    scores = np.asarray(scores)
    if scores.shape != (len(graph.edges),):
        raise BadRequest(f"Expected one score per edge ({len(graph.edges)}), got shape {scores.shape}.")
    sizes = np.asarray(sorted({min(max(int(s), 0), len(graph.edges)) for s in sizes}), dtype=np.int64)
    if len(sizes) == 0:
        raise BadRequest("No circuit sizes to test.")
    return scores, sizes


def check_gap(gap: float) -> None:
    """Refuse a task whose clean and corrupted runs have the same total logit difference (M undefined)."""
    if abs(gap) < 1e-6:
        raise BadRequest(GAP_MESSAGE)


def curve_from_diffs(sizes: np.ndarray, lds: torch.Tensor, ld_clean: torch.Tensor, ld_corr: torch.Tensor) -> Curve:
    """The curve from the ablated runs' logit differences ``lds`` (circuits, pairs) and the clean and
    corrupted ones (pairs,): M = sum(LD - LD_corr) / sum(LD_clean - LD_corr) per circuit."""
    gap = float((ld_clean - ld_corr).sum())
    check_gap(gap)
    metric = ((lds - ld_corr).sum(1) / gap).numpy()
    return Curve(sizes, metric, ld_clean.numpy(), ld_corr.numpy())


def area(sizes: np.ndarray, metric: np.ndarray, n_edges: int, scale: str = "log") -> float:
    """Normalised area under a faithfulness curve: the mean of M over the tested range of x, by the
    trapezoid rule, where x = log(size) / log(n_edges) (``"log"``, sizes of 0 left out) or
    x = size / n_edges (``"fraction"``). A curve at M = 1 everywhere has area 1."""
    sizes, metric = np.asarray(sizes, dtype=np.float64), np.asarray(metric, dtype=np.float64)
    if scale == "log":
        use = sizes >= 1
        x = np.log(sizes[use]) / np.log(max(n_edges, 2))
        y = metric[use]
    elif scale == "fraction":
        x, y = sizes / n_edges, metric
    else:
        raise BadRequest(f"Unknown area scale {scale!r}; choose 'log' or 'fraction'.")
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean()) if len(y) else float("nan")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def smallest_recovering(sizes: np.ndarray, metric: np.ndarray, threshold: float = 0.8) -> int | None:
    """The smallest tested size whose M reaches ``threshold`` (None when none does)."""
    for size, value in sorted(zip(np.asarray(sizes).tolist(), np.asarray(metric).tolist(), strict=True)):
        if value >= threshold:
            return int(size)
    return None
