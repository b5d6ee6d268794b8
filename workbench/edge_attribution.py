"""Edge attribution over a task: EAP, RelP and EAP-IG scores for every edge of the circuit graph.

Owns scoring every edge ``u -> v`` of ``circuit_graph.Graph`` over a task's pairs (a
``circuit_tasks.PairBatch``) by the first-order estimate of what patching it does to the task metric
``M`` (``circuit_tasks.task_metric``):

    score(u -> v) = sum over pairs and positions of (a_u(clean) - a_u(corrupted)) . dM / d input_v

with ``a_u`` writer ``u``'s output and ``input_v`` reader ``v``'s own copy of its input (the split-input
run of ``circuit_runs.split_forward``: every reader's delta is a zero tensor requiring grad, so ONE
backward gives ``dM / d input_v`` for every reader at once). As in ``analyses.patching`` (AtP), the
gradient is taken on the corrupted run, and the score estimates the change of ``M`` (0 there) when the
clean value is patched in. Three ways to take the gradient:

``atp``  plain gradients: edge attribution patching (Syed, Rager & Conmy 2023, "Attribution Patching
         Outperforms Automated Circuit Discovery").
``relp`` the same pass under the LRP rules of ``interventions.lrp_rules`` (LN, identity, half; the AH
         rule optional): Relevance Patching (Jafari et al. 2025). With every nonlinearity covered the
         relevance ``value . gradient`` is conserved through the graph, bias relevance included.
``ig``   EAP-IG (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness"): the gradient averaged
         over ``steps`` points where the input embeddings (the ``embed`` writer, the residual at slot 0)
         interpolate from the corrupted to the clean prompt, at the midpoints ``alpha = (k - 1/2) / steps``.

Node scores: a writer's attribution ``(a_u(clean) - a_u(corrupted)) . dM / d a_u`` (a zero probe on its
output; for a head, the attention write of its block, since the heads' shares add up to it); by the chain
rule it equals the sum of the scores of the edges out of ``u``. ``M`` is normalised over the whole task,
so the task-level scores are sums over pairs; per-pair scores are scaled by the number of pairs, so
their mean over pairs is the task-level score.

Scale-out (NDIF): these passes are plain-PyTorch hooks on the HF modules, so they run locally. Their
nnsight form, which runs on NDIF unchanged, is ``circuit_trace.attribute_edges_traced`` (the batch widened
by repeated ids, each hook an intervention on the same envoy, the rules as value-preserving edits except
the AH rule, the gradient taken inside the trace); it gives these scores to float round-off
(tests/test_circuit_trace.py), and the circuit analysis uses it for a remote model.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from workbench.circuit_graph import Graph
from workbench.circuit_runs import (
    NO_RULES,
    FixedDeltas,
    Progress,
    _logit_diffs,
    _no_progress,
    split_forward,
    writer_index,
)
from workbench.circuit_tasks import PairBatch
from workbench.errors import BadRequest
from workbench.interventions import Rules, _bias_parameters, _gradients_flow
from workbench.models.loader import LoadedModel

METHODS = ("atp", "relp", "ig")
RELP_RULES = Rules(ln=True, identity=True, half=True)


@dataclass(frozen=True)
class ReaderGradients:
    """One gradient pass (or the IG average): ``dM/d input_v`` and ``dM/d a_u`` per pair and position."""

    reader_grads: torch.Tensor  # (reader, pairs, seq, d), graph.readers order
    writer_grads: torch.Tensor  # (writer, pairs, seq, d), graph.writers order
    values: torch.Tensor  # (writer, pairs, seq, d) writers' outputs on the run the gradient was taken on
    biases: torch.Tensor  # (n_layers, ., ., d) projection biases added to the residual in that run
    metric: float  # M of that run
    output_relevance: float  # sum(logits * dM / dlogits) at the pairs' last tokens
    bias_relevance: torch.Tensor  # (n_layers + 1,) sum(b * dM / db) per block, then the final norm / unembed


@dataclass(frozen=True)
class EdgeAttribution:
    method: str
    rules: Rules
    steps: int
    edge_scores: np.ndarray  # (edge,) graph.edges order: the first-order change of M, whole task
    edge_scores_per_pair: np.ndarray  # (pair, edge), mean over pairs = edge_scores
    node_scores: np.ndarray  # (writer,) graph.writers order
    node_scores_per_pair: np.ndarray  # (pair, writer)
    ld_clean: np.ndarray  # (pair,)
    ld_corrupted: np.ndarray  # (pair,)
    seconds: float  # wall-clock
    cpu_seconds: float  # process CPU time


def _zeros(shape, model: LoadedModel) -> torch.Tensor:
    dtype = next(model.hf_model.parameters()).dtype
    return torch.zeros(shape, dtype=dtype, device=model.device, requires_grad=True)


def reader_gradients(
    model: LoadedModel,
    graph: Graph,
    batch: PairBatch,
    ld_clean: torch.Tensor,
    ld_corrupted: torch.Tensor,
    rules: Rules = NO_RULES,
    x0: torch.Tensor | None = None,
) -> ReaderGradients:
    """One forward and one backward of the split-input run of the corrupted prompts (block-0 input
    replaced by ``x0`` when given) with ``M = sum(LD - LD_corr) / sum(LD_clean - LD_corr)``."""
    rows, seq = batch.corrupted_ids.shape
    d, n_heads, n_layers = model.info.d_model, graph.n_heads, graph.n_layers
    gap = float((ld_clean - ld_corrupted).sum())
    if abs(gap) < 1e-6:
        raise BadRequest("The clean and corrupted prompts give the same total logit difference, so the task "
                         "metric is undefined; the corruption must change the answer.")
    heads = {layer: _zeros((rows, n_heads, seq, d), model) for layer in range(n_layers)}
    mlps = {layer: _zeros((rows, seq, d), model) for layer in range(n_layers)}
    logit = _zeros((rows, seq, d), model)
    probes = {"embed": _zeros((rows, seq, d), model)}
    for layer in range(n_layers):
        probes[f"attn{layer}"] = _zeros((rows, seq, d), model)
        probes[f"mlp{layer}"] = _zeros((rows, seq, d), model)
    groups = _bias_parameters(model)
    flat = [b for group in groups for b in group]
    with model.lock, torch.enable_grad(), contextlib.ExitStack() as stack:
        stack.enter_context(_gradients_flow(model, flat))
        run = split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last,
                            deltas=FixedDeltas(heads, mlps, logit), probes=probes, x0=x0, rules=rules)
        ld = _logit_diffs(run.logits, batch, 1)[0]
        metric = (ld - ld_corrupted.to(ld)).sum() / gap
        inputs = [heads[layer] for layer in range(n_layers)] + [mlps[layer] for layer in range(n_layers)]
        inputs += [logit, *probes.values(), run.logits, *flat]
        grads = torch.autograd.grad(metric, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]
    reader = torch.zeros((len(graph.readers), rows, seq, d), dtype=heads[0].dtype)
    writer = torch.zeros((len(graph.writers), rows, seq, d), dtype=heads[0].dtype)
    for layer in range(n_layers):
        base = layer * (n_heads + 1)
        reader[base : base + n_heads] = grads[layer].transpose(0, 1).cpu()
        reader[base + n_heads] = grads[n_layers + layer].cpu()
    reader[-1] = grads[2 * n_layers].cpu()
    probe_grads = dict(zip(probes, grads[2 * n_layers + 1 : 2 * n_layers + 1 + len(probes)], strict=True))
    writer[0] = probe_grads["embed"].cpu()
    for layer in range(n_layers):
        for h in range(n_heads):
            writer[writer_index(graph, "head", layer, h)] = probe_grads[f"attn{layer}"].cpu()
        writer[writer_index(graph, "mlp", layer)] = probe_grads[f"mlp{layer}"].cpu()
    logit_grad = grads[2 * n_layers + 1 + len(probes)]
    bias_grads = iter(grads[2 * n_layers + 2 + len(probes) :])
    bias_relevance = torch.zeros(len(groups), dtype=torch.float64)
    for index, group in enumerate(groups):
        for param in group:
            bias_relevance[index] += float((param.detach().double() * next(bias_grads).double()).sum())
    return ReaderGradients(
        reader_grads=reader,
        writer_grads=writer,
        values=run.writes.cpu(),
        biases=run.biases.cpu(),
        metric=float(metric.detach()),
        output_relevance=float((run.logits.detach().double() * logit_grad.double()).sum()),
        bias_relevance=bias_relevance,
    )


def edge_products(graph: Graph, values: torch.Tensor, grads: ReaderGradients | torch.Tensor) -> torch.Tensor:
    """(pair, edge) ``values[u] . reader_grads[v]`` summed over positions and width, for every edge."""
    reader_grads = grads.reader_grads if isinstance(grads, ReaderGradients) else grads
    w, pairs = values.shape[:2]
    left = values.double().permute(1, 0, 2, 3).reshape(pairs, w, -1)
    right = reader_grads.double().permute(1, 0, 2, 3).reshape(pairs, reader_grads.shape[0], -1)
    full = torch.bmm(left, right.transpose(1, 2))  # (pair, writer, reader)
    edges = torch.as_tensor(graph.edges)
    return full[:, edges[:, 0], edges[:, 1] - 1]


def node_products(values: torch.Tensor, writer_grads: torch.Tensor) -> torch.Tensor:
    """(pair, writer) ``values[u] . writer_grads[u]``."""
    return (values.double() * writer_grads.double()).sum((2, 3)).T


def attribute_edges(
    model: LoadedModel,
    batch: PairBatch,
    graph: Graph,
    method: str = "atp",
    *,
    rules: Rules | None = None,
    steps: int = 5,
    progress: Progress = _no_progress,
) -> EdgeAttribution:
    """Edge and node scores of ``method`` ("atp", "relp", "ig") over the task (module docstring).

    ``rules``: RelP's rules (default LN, identity and half; pass ``attention=True`` for the AH rule);
    ignored by the other methods. ``steps``: IG's interpolation points."""
    if method not in METHODS:
        raise BadRequest(f"Unknown edge attribution method {method!r}; choose one of: {', '.join(METHODS)}.")
    if method == "ig" and not 1 <= int(steps) <= 1000:
        raise BadRequest(f"IG needs between 1 and 1000 steps, got {steps}.")
    rules = (rules or RELP_RULES) if method == "relp" else Rules()
    steps = int(steps) if method == "ig" else 1
    wall, cpu = time.perf_counter(), time.process_time()
    progress(0.0, "Clean and corrupted runs")
    with torch.no_grad():
        clean = split_forward(model, graph, batch.clean_ids, batch.attention_mask, batch.last)
        corrupted = split_forward(model, graph, batch.corrupted_ids, batch.attention_mask, batch.last)
    ld_clean = _logit_diffs(clean.logits.double(), batch, 1)[0]
    ld_corr = _logit_diffs(corrupted.logits.double(), batch, 1)[0]
    if method == "ig":
        reader = writer = None
        for k in range(steps):
            progress((k + 1) / (steps + 2), f"Integrated gradients: step {k + 1} of {steps}")
            alpha = (k + 0.5) / steps
            x0 = corrupted.writes[0] + alpha * (clean.writes[0] - corrupted.writes[0])
            grads = reader_gradients(model, graph, batch, ld_clean, ld_corr, rules, x0=x0)
            reader = grads.reader_grads if reader is None else reader + grads.reader_grads
            writer = grads.writer_grads if writer is None else writer + grads.writer_grads
        reader, writer = reader / steps, writer / steps
    else:
        progress(0.4, "Gradient pass" + (" (RelP rules)" if rules.any else ""))
        grads = reader_gradients(model, graph, batch, ld_clean, ld_corr, rules)
        reader, writer = grads.reader_grads, grads.writer_grads
    progress(0.9, "Edge scores")
    diff = (clean.writes - corrupted.writes).cpu()
    pairs = len(batch)
    edges = edge_products(graph, diff, reader) * pairs
    nodes = node_products(diff, writer) * pairs
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    progress(1.0, "Done")
    return EdgeAttribution(
        method=method, rules=rules, steps=steps,
        edge_scores=edges.mean(0).numpy(), edge_scores_per_pair=edges.numpy(),
        node_scores=nodes.mean(0).numpy(), node_scores_per_pair=nodes.numpy(),
        ld_clean=ld_clean.numpy(), ld_corrupted=ld_corr.numpy(),
        seconds=seconds, cpu_seconds=cpu_seconds,
    )
