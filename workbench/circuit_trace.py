"""Circuit edge attribution and ablation runs as nnsight traces, so they run on NDIF unchanged.

Owns the nnsight form of ``circuit_runs.split_forward`` (read its docstring and ``circuit_graph``'s for
the split-input run, the graph and edge ablation) and of what ``edge_attribution`` and ``circuit_runs``
compute with it, after Conmy et al. (2023, ACDC), Syed, Rager & Conmy (2023, EAP) and Hanna, Pezzelle &
Belinkov (2024, EAP-IG):

* ``attribute_edges_traced``: the same ``edge_attribution.EdgeAttribution`` as
  ``edge_attribution.attribute_edges`` ("atp": plain gradients; "relp": RelP, Jafari et al. 2025; "ig":
  EAP-IG), from ONE trace. The rows
  of the batch are groups of the task's pairs (clean, corrupted, then one group per IG step, whose
  block-0 input is interpolated inside the trace), each widened to one copy per head by passing the
  repeated ids. The zero deltas of every reader and the zero probes on every writer are created inside
  the trace; the metric and its gradient (``torch.autograd.grad``) are taken inside it too, and so are
  the edge and node products, so only (pairs, edges) scores and the logit differences come back.
* ``ablate_traced`` / ``faithfulness_curve_traced``: ``circuit_runs.ablate`` / ``faithfulness_curve``
  with the source computed in the same forward: group 0 is the plain corrupted run and the other groups
  are circuits on the clean prompts, each reader's delta built from the writers' outputs of this very
  run minus those of group 0 (``source="corrupted"``) or of their mean over the pairs (``"mean"``), so
  no (writer, pairs, seq, d) source tensor travels.

Each hook of ``circuit_runs`` is an intervention on the same envoy inside ``lm.trace``: the block input
(record ``embed``, IG interpolation, probe), the attention input (the attention norm re-applied ad hoc
to each copy's own input plus delta), the output projection's input (head ``k`` from copy ``k``) and
output, or the post-attention norm's (per-head shares, probe), the MLP's input (copy 0 only, its norm
re-applied) and output, the post-MLP norm, the final norm's input and the unembedding's input (each
pair's last real token). RelP's rules (``interventions``) become value-preserving edits
``y.detach() + (linear term, zero in value)`` of the same values: the LN rule on every norm call that
reaches the result (the ad-hoc ones included) and on the final norm, the identity rule on the MLP
activation and the soft-cap, the half rule on the gated product. Module roles come from the adapter.
The blocks read only plain locals (ints, strings, tensors, moved inside the block to the device the
activations are on: NDIF's, not this machine's) and the model's envoys, the in-trace helpers are shipped
by value (``nnsight.register``), and every trace takes ``remote.trace_options``: on a remote model
(``LoadedModel.remote``) the very same block runs on NDIF (tests/test_circuit_trace.py checks this with
the loopback server of tests/test_remote.py: same shipped program, bit-identical scores).

Not here: RelP's AH rule (it swaps the attention function, which a trace cannot do: refused) and the
bias relevance of ``edge_attribution.ReaderGradients``. Like ``workbench.tracing``, this module opens nnsight traces; it
is the only other one that does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import nnsight
import numpy as np
import torch

from workbench import remote
from workbench.circuit_graph import Graph
from workbench.circuit_runs import (
    SOURCES,
    Curve,
    Progress,
    _dropped,
    _no_progress,
    check_gap,
    curve_from_diffs,
    curve_sizes,
    top_edges,
)
from workbench.circuit_tasks import PairBatch
from workbench.edge_attribution import RELP_RULES, EdgeAttribution
from workbench.errors import BadRequest
from workbench.interventions import Rules
from workbench.models.loader import LoadedModel

METHODS = ("atp", "relp", "ig")


# ---------------------------------------------------------------------- in-trace helpers (shipped by value)


def _copy0(x, rows, k):
    """(rows * k, ...) -> (rows, ...): copy 0 of every row."""
    return x.reshape(rows, k, *x.shape[1:])[:, 0]


def _widen(x, k):
    """(rows, ...) -> (rows * k, ...): ``k`` equal copies of every row."""
    return x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:]).reshape(-1, *x.shape[1:]).contiguous()


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _rms_factor(weight, x, offset, eps):
    """Per-position ``(offset + w) / rms(x)`` of an RMS norm (``circuit_runs._rms_factor``)."""
    inv = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return ((weight.float() + offset) * inv).to(x.dtype)


def _ablation_delta(dropped, diffs, n_writers, readers):
    """``-sum over dropped writers u of diffs[u]`` for each reader: (groups * pairs, len(readers), seq, d)."""
    weights = dropped[:, :n_writers, readers].to(diffs)  # (group, writer, reader)
    delta = -torch.einsum("gwr,wgpsd->gprsd", weights, diffs[:n_writers])
    return delta.reshape(delta.shape[0] * delta.shape[1], len(readers), *delta.shape[3:])


def _soft_cap(raw, cap, identity=False):
    """The final logit soft-cap; under RelP's identity rule its gradient is ``capped / raw``
    (``interventions.final_logits``)."""
    if cap is None:
        return raw
    capped = torch.tanh(raw / cap) * cap
    if not identity:
        return capped
    ones = torch.ones_like(raw)
    ratio = torch.where(raw == 0, ones, capped / torch.where(raw == 0, ones, raw))
    return capped.detach() + ratio.detach() * (raw - raw.detach())


def _ln_rule(x, output, weight, bias, centred, eps, offset):
    """RelP's LN rule as a value-preserving edit of a norm's output (``interventions._ln_rule``): the
    same values, the gradient of ``w * (x - mean) / scale`` with the scale held constant."""
    xf = x.float()
    xc = xf - xf.mean(-1, keepdim=True) if centred else xf
    scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    w = 1.0 if weight is None else weight.detach().float() + offset
    base = output.detach()
    if bias is not None:
        base = base + (bias - bias.detach())
    return base + (w * (xc - xc.detach()) / scale.detach()).to(output.dtype)


def _identity_rule(x, output):
    """RelP's identity rule for an elementwise activation (``interventions._identity_rule``)."""
    ratio = torch.where(x == 0, torch.zeros_like(x), output / torch.where(x == 0, torch.ones_like(x), x))
    return output.detach() + ratio.detach() * (x - x.detach())


def _norm(envoy, x, rule):
    """A norm envoy applied ad hoc to ``x``; ``rule``: (centred, eps, offset) of the LN rule, or None."""
    y = envoy(x)
    if rule is None:
        return y
    return _ln_rule(x, y, envoy.weight, getattr(envoy, "bias", None), rule[0], rule[1], rule[2])


def _ruled(envoy, x, output, rule):
    """A norm's own ``output`` of ``x`` in this run, under the LN rule if ``rule`` is given."""
    if rule is None:
        return output
    return _ln_rule(x, output, envoy.weight, getattr(envoy, "bias", None), rule[0], rule[1], rule[2])


nnsight.register(sys.modules[__name__])  # NDIF has no workbench package: the helpers travel as source


# ---------------------------------------------------------------------- the traced split run


def _layout(model: LoadedModel) -> dict:
    """Plain facts the traced block reads (no LoadedModel inside a block): norm names, the output
    projection's layout, norm constants, read from the model's module tree (a meta skeleton for a
    remote model: shapes and types, no weights)."""
    spec = model.spec
    tree = model.lm._module  # structure only; never its weights here
    blk = tree.get_submodule(spec.layers)[0]
    o_proj = blk.get_submodule(spec.attn).get_submodule(spec.attn_out)
    transposed = not isinstance(o_proj, torch.nn.Linear)
    if transposed and not (hasattr(o_proj, "nf") and o_proj.weight.shape[-1] == o_proj.nf):
        raise BadRequest(f"{type(o_proj).__name__} is not a linear projection; circuits cannot split its heads.")
    post_eps = None
    if spec.attn_post_norm is not None:
        post = blk.get_submodule(spec.attn_post_norm)
        if isinstance(post, torch.nn.LayerNorm):
            raise BadRequest("A centring post-attention norm cannot be split into head shares.")
        post_eps = float(getattr(post, "variance_epsilon", None) or getattr(post, "eps", 1e-6))
    ln = {}  # norm name -> (centred, eps, weight offset): what the LN rule needs (block norms, final norm)
    for name in spec.block_norms:
        ln[name] = _norm_facts(blk.get_submodule(name), spec.norm_weight_offset)
    ln["final_norm"] = _norm_facts(tree.get_submodule(spec.final_norm), spec.norm_weight_offset)
    return dict(ln=ln, mlp_act=spec.mlp_act, mlp_out=spec.mlp_out, gated=spec.gated,
                attn_norm=spec.attn_norm, attn_out=spec.attn_out, attn_post_norm=spec.attn_post_norm,
                pre_mlp_norm=spec.pre_mlp_norm, mlp_post_norm=spec.mlp_post_norm, sequential=spec.sequential,
                offset=float(spec.norm_weight_offset), transposed=transposed, post_eps=post_eps,
                cap=model.info.logit_softcap)


def _norm_facts(norm: torch.nn.Module, offset: float) -> tuple:
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    return (isinstance(norm, torch.nn.LayerNorm), float(eps), float(offset))


def _wide_inputs(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, k: int) -> dict:
    return {"input_ids": ids.repeat_interleave(k, 0).to(model.device),
            "attention_mask": mask.repeat_interleave(k, 0).to(model.device)}


def _check_method(method: str, steps: int) -> None:
    if method not in METHODS:
        raise BadRequest(f"Unknown edge attribution method {method!r}; choose one of: {', '.join(METHODS)}.")
    if method == "ig" and not 1 <= int(steps) <= 1000:
        raise BadRequest(f"IG needs between 1 and 1000 steps, got {steps}.")


def attribute_edges_traced(
    model: LoadedModel,
    batch: PairBatch,
    graph: Graph,
    method: str = "atp",
    *,
    rules: Rules | None = None,
    steps: int = 5,
    max_rows: int = 64,
    progress: Progress = _no_progress,
) -> EdgeAttribution:
    """``edge_attribution.attribute_edges`` as nnsight traces (module docstring); runs on NDIF for a
    remote model. ``rules``: RelP's rules (default LN, identity, half; the AH rule is refused here);
    ignored by the other methods. ``steps``: IG's interpolation points (``alpha = (k - 1/2) / steps``).
    ``max_rows``: pair rows (clean, corrupted and IG groups together, before the widening to one copy
    per head) per trace; the pairs are split into chunks that fit, each trace giving its pairs' scores."""
    _check_method(method, steps)
    rules = (rules or RELP_RULES) if method == "relp" else Rules()
    if rules.attention:
        raise BadRequest("RelP's AH rule (attention probabilities held constant) needs the model's attention "
                         "function swapped, which a trace cannot do; run RelP without it, or on a local model.")
    steps = int(steps) if method == "ig" else 1
    wall, cpu = time.perf_counter(), time.process_time()
    alphas = [(i + 0.5) / steps for i in range(steps)] if method == "ig" else []
    groups = 2 + len(alphas)  # clean, corrupted, IG steps
    per_trace = max(1, max_rows // groups)
    edges, nodes, lds, gaps = [], [], [], []
    for start in range(0, len(batch), per_trace):
        chunk = batch.take(list(range(start, min(start + per_trace, len(batch)))))
        progress(start / len(batch), f"Clean, corrupted and gradient rows of pairs {start + 1} to "
                                     f"{start + len(chunk)} of {len(batch)} in one traced pass")
        found = _attribution_trace(model, chunk, graph, rules, alphas)
        edges.append(found[0])
        nodes.append(found[1])
        lds.append(found[2])
        gaps.append(found[3])
    lds = torch.cat(lds, 1)  # (clean and corrupted, pairs)
    gap = float((lds[0] - lds[1]).sum())
    check_gap(gap)
    # each trace normalised M by its own pairs' gap: rescale to the task's (a factor of exactly 1 for one
    # trace); per-pair scores are scaled by the number of pairs (edge_attribution's convention)
    factors = [(own / gap) * len(batch) for own in gaps]
    edges = torch.cat([e * f for e, f in zip(edges, factors, strict=True)])
    nodes = torch.cat([n * f for n, f in zip(nodes, factors, strict=True)])
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    progress(1.0, "Done")
    return EdgeAttribution(
        method=method, rules=rules, steps=steps,
        edge_scores=edges.mean(0).numpy(), edge_scores_per_pair=edges.numpy(),
        node_scores=nodes.mean(0).numpy(), node_scores_per_pair=nodes.numpy(),
        ld_clean=lds[0].numpy(), ld_corrupted=lds[1].numpy(),
        seconds=seconds, cpu_seconds=cpu_seconds,
    )


def _attribution_trace(model: LoadedModel, batch: PairBatch, graph: Graph, rules: Rules, alphas: list) -> tuple:
    """One trace: (pairs, edge) and (pairs, writer) products of ``a_u(clean) - a_u(corrupted)`` with the
    gradients of M over these pairs (IG: averaged over the points), the (group, pairs) LDs of the clean and
    corrupted rows, and the gap M was normalised by (its LD_clean - LD_corr summed over these pairs)."""
    lay = _layout(model)
    attn_norm, attn_out, attn_post_norm = lay["attn_norm"], lay["attn_out"], lay["attn_post_norm"]
    pre_mlp_norm, mlp_post_norm, sequential = lay["pre_mlp_norm"], lay["mlp_post_norm"], lay["sequential"]
    offset, transposed, post_eps, cap = lay["offset"], lay["transposed"], lay["post_eps"], lay["cap"]
    mlp_act, mlp_out = lay["mlp_act"], lay["mlp_out"]
    identity, half = rules.identity, rules.half and lay["gated"]
    ln = lay["ln"] if rules.ln else {}  # norm name -> LN rule facts; empty: no LN rule
    n_layers, k, pairs = graph.n_layers, graph.n_heads, len(batch)
    groups = 2 + len(alphas)
    rows, seq = groups * pairs, batch.clean_ids.shape[1]
    n_writers, n_readers = len(graph.writers), len(graph.readers)
    ids = torch.cat([batch.clean_ids, *[batch.corrupted_ids] * (groups - 1)])
    inputs = _wide_inputs(model, ids, torch.cat([batch.attention_mask] * groups), k)
    last = batch.last.repeat(groups).to(model.device)
    answer = batch.answer_ids.repeat(groups).to(model.device)
    wrong = batch.wrong_ids.repeat(groups).to(model.device)
    edges = torch.as_tensor(graph.edges).to(model.device)
    lm = model.lm
    with model.lock, torch.enable_grad():
        with lm.trace(inputs, **remote.trace_options(model.remote)):
            leaves = []  # reader deltas (head, mlp per block, logits), then writer probes (embed, attn, mlp)
            head_leaves, mlp_leaves, attn_probes, mlp_probes = [], [], [], []
            writes = []  # writer order: (rows, seq, d) each
            x = lm.layers[0].input
            d, dtype, device = x.shape[-1], x.dtype, x.device
            if alphas:
                grouped = x.reshape(groups, pairs * k, seq, d)
                parts = [grouped[0], grouped[1]]
                for alpha in alphas:
                    parts.append(grouped[1] + alpha * (grouped[0] - grouped[1]))
                x = torch.stack(parts).reshape(rows * k, seq, d)
            writes.append(_copy0(x, rows, k).detach())
            embed_probe = torch.zeros((rows, seq, d), dtype=dtype, device=device, requires_grad=True)
            x = x + _widen(embed_probe, k)
            lm.layers[0].input = x
            for layer in range(n_layers):
                blk = lm.layers[layer]
                if layer > 0:
                    x = blk.input
                head_delta = torch.zeros((rows, k, seq, d), dtype=dtype, device=device, requires_grad=True)
                head_leaves.append(head_delta)
                xa = (x.reshape(rows, k, seq, d) + head_delta).reshape(rows * k, seq, d)
                blk.attn.input = xa if attn_norm is None else _norm(getattr(blk, attn_norm), xa, ln.get(attn_norm))
                o = getattr(blk.attn, attn_out)
                z = o.input.reshape(rows, k, seq, k, -1)
                eye = torch.eye(k, dtype=dtype, device=device).reshape(1, k, 1, k, 1)
                combined = (z * eye).sum(1)  # (rows, seq, head, head_dim): head h from copy h
                weight = o.weight.t() if transposed else o.weight
                heads = torch.einsum("nshe,dhe->nhsd", combined.detach(), weight.detach().reshape(d, k, -1))
                o.input = _widen(combined.reshape(rows, seq, -1), k)
                attn_probe = torch.zeros((rows, seq, d), dtype=dtype, device=device, requires_grad=True)
                attn_probes.append(attn_probe)
                if attn_post_norm is None:
                    written = o.output + _widen(attn_probe, k)
                    o.output = written
                else:
                    post = getattr(blk, attn_post_norm)
                    post_in = post.input
                    factor = _rms_factor(post.weight, post_in, offset, post_eps)
                    heads = heads * _copy0(factor, rows, k).unsqueeze(1)
                    written = _ruled(post, post_in, post.output, ln.get(attn_post_norm)) + _widen(attn_probe, k)
                    post.output = written
                for h in range(k):
                    writes.append(heads[:, h].detach())
                source = x + written if sequential else x
                mlp_delta = torch.zeros((rows, seq, d), dtype=dtype, device=device, requires_grad=True)
                mlp_leaves.append(mlp_delta)
                xm = _copy0(source, rows, k) + mlp_delta
                blk.mlp.input = xm if pre_mlp_norm is None else _norm(getattr(blk, pre_mlp_norm), xm,
                                                                      ln.get(pre_mlp_norm))
                if identity:
                    act = getattr(blk.mlp, mlp_act)
                    act.output = _identity_rule(act.input, act.output)
                if half:
                    down = getattr(blk.mlp, mlp_out)
                    product = down.input
                    down.input = 0.5 * product + 0.5 * product.detach()
                mlp_probe = torch.zeros((rows, seq, d), dtype=dtype, device=device, requires_grad=True)
                mlp_probes.append(mlp_probe)
                out = _first(blk.mlp.output)
                if mlp_post_norm is None:
                    writes.append(out.detach())
                    blk.mlp.output = _widen(out + mlp_probe, k)
                else:
                    blk.mlp.output = _widen(out, k)
                    post = getattr(blk, mlp_post_norm)
                    out = _copy0(_ruled(post, post.input, post.output, ln.get(mlp_post_norm)), rows, k)
                    writes.append(out.detach())
                    post.output = _widen(out + mlp_probe, k)
            logit_delta = torch.zeros((rows, seq, d), dtype=dtype, device=device, requires_grad=True)
            final_in = lm.final_norm.input + _widen(logit_delta, k)
            lm.final_norm.input = final_in
            if ln:
                lm.final_norm.output = _ruled(lm.final_norm, final_in, lm.final_norm.output, ln["final_norm"])
            h_final = _copy0(lm.unembed.input, rows, k)
            lm.unembed.input = h_final[torch.arange(rows, device=device), last.to(device)].unsqueeze(1)
            logits = _soft_cap(lm.unembed.output[:, 0], cap, identity)
            picked = torch.arange(rows, device=device)
            ld = logits[picked, answer.to(device)] - logits[picked, wrong.to(device)]  # (rows,) model's dtype
            ld_all = ld.detach().double().reshape(groups, pairs)
            gap = float((ld_all[0] - ld_all[1]).sum())
            scale = gap if abs(gap) >= 1e-6 else 1.0
            # M of every gradient group (the corrupted run for EAP, each IG point) over this trace's pairs,
            # summed: each group's rows get the gradient of their own M (rescaled to the task's gap after)
            metric = (ld.reshape(groups, pairs)[min(2, groups - 1):] - ld_all[1].to(ld)).sum() / scale
            scale = nnsight.save(scale)
            leaves = head_leaves + mlp_leaves
            leaves.append(logit_delta)
            leaves.append(embed_probe)
            leaves = leaves + attn_probes + mlp_probes
            grads = torch.autograd.grad(metric, leaves, allow_unused=True)
            first = min(2, groups - 1)  # the first gradient group
            reader_grads = []
            for layer in range(n_layers):
                g = grads[layer]
                g = torch.zeros_like(head_delta) if g is None else g
                g = g.reshape(groups, pairs, k, seq, d)[first:].double().mean(0)  # (pairs, k, seq, d)
                for h in range(k):
                    reader_grads.append(g[:, h])
                g = grads[n_layers + layer]
                g = torch.zeros_like(mlp_delta) if g is None else g
                reader_grads.append(g.reshape(groups, pairs, seq, d)[first:].double().mean(0))
            g = grads[2 * n_layers]
            g = torch.zeros_like(logit_delta) if g is None else g
            reader_grads.append(g.reshape(groups, pairs, seq, d)[first:].double().mean(0))
            writer_grads = []
            probe_grads = grads[2 * n_layers + 1:]
            g = probe_grads[0]
            writer_grads.append(torch.zeros_like(embed_probe) if g is None else g)
            for layer in range(n_layers):
                g = probe_grads[1 + layer]
                g = torch.zeros_like(embed_probe) if g is None else g
                for _head in range(k):  # a head's node score: its block's attention write
                    writer_grads.append(g)
                g = probe_grads[1 + n_layers + layer]
                writer_grads.append(torch.zeros_like(embed_probe) if g is None else g)
            # edge and node products of (a_u(clean) - a_u(corrupted)) with the gradients, per pair
            values = torch.stack(writes).reshape(n_writers, groups, pairs, seq, d)
            diff = (values[:, 0] - values[:, 1]).double()  # (writer, pairs, seq, d)
            reader_all = torch.stack(reader_grads)  # (reader, pairs, seq, d)
            left = diff.permute(1, 0, 2, 3).reshape(pairs, n_writers, -1)
            right = reader_all.permute(1, 0, 2, 3).reshape(pairs, n_readers, -1)
            full = torch.bmm(left, right.transpose(1, 2))  # (pairs, writer, reader)
            edge_products = nnsight.save(full[:, edges[:, 0].to(device), edges[:, 1].to(device) - 1])
            writer_all = torch.stack(writer_grads).double().reshape(n_writers, groups, pairs, seq, d)[:, first:]
            node_products = nnsight.save((diff * writer_all.mean(1)).sum((2, 3)).T)
            lds = nnsight.save(ld_all[:2])
    return edge_products.detach().cpu(), node_products.detach().cpu(), lds.detach().cpu(), float(scale)


# ---------------------------------------------------------------------- ablation


def ablate_traced(
    model: LoadedModel,
    batch: PairBatch,
    graph: Graph,
    keep: np.ndarray | torch.Tensor,
    source: str = "corrupted",
    *,
    max_rows: int = 64,
    progress: Progress = _no_progress,
    with_corrupted: bool = False,
):
    """``circuit_runs.ablate`` as nnsight traces (module docstring): per-pair LD with every edge outside the
    circuit ablated; ``keep`` (edges,) gives (pairs,), (circuits, edges) gives (circuits, pairs). Each trace
    runs the corrupted prompts (the source) and ``max(1, max_rows // pairs)`` circuits. ``with_corrupted``:
    also return the plain corrupted run's (pairs,) LD (of the first trace)."""
    if source not in SOURCES:
        raise BadRequest(f"Unknown ablation source {source!r}; choose one of: {', '.join(SOURCES)}.")
    keep = torch.as_tensor(np.asarray(keep), dtype=torch.bool)
    single = keep.dim() == 1
    keep = keep.view(-1, keep.shape[-1])
    if keep.shape[1] != len(graph.edges):
        raise BadRequest(f"The circuit mask has {keep.shape[1]} entries; the graph has {len(graph.edges)} edges.")
    pairs = len(batch)
    per_forward = max(1, max_rows // pairs)
    out, corrupted = [], None
    for start in range(0, keep.shape[0], per_forward):
        chunk = keep[start : start + per_forward]
        lds = _ablation_trace(model, batch, graph, chunk, source)
        corrupted = lds[0] if corrupted is None else corrupted
        out.append(lds[1:])
        done = start + chunk.shape[0]
        progress(min(1.0, done / keep.shape[0]), f"Ablation runs: {done} of {keep.shape[0]} circuits")
    lds = torch.cat(out)
    lds = lds[0] if single else lds
    return (lds, corrupted) if with_corrupted else lds


def _ablation_trace(model: LoadedModel, batch: PairBatch, graph: Graph, keep: torch.Tensor,
                    source: str) -> torch.Tensor:
    """(1 + circuits, pairs) LD: the plain corrupted run, then each circuit of ``keep`` on the clean prompts."""
    lay = _layout(model)
    attn_norm, attn_out, attn_post_norm = lay["attn_norm"], lay["attn_out"], lay["attn_post_norm"]
    pre_mlp_norm, mlp_post_norm, sequential = lay["pre_mlp_norm"], lay["mlp_post_norm"], lay["sequential"]
    offset, transposed, post_eps, cap = lay["offset"], lay["transposed"], lay["post_eps"], lay["cap"]
    n_layers, k, pairs = graph.n_layers, graph.n_heads, len(batch)
    groups = 1 + keep.shape[0]
    rows, seq = groups * pairs, batch.clean_ids.shape[1]
    n_writers = len(graph.writers)
    mean = source == "mean"
    # (group, writer, reader): 1 where an edge exists and is not kept; group 0 (the source) ablates nothing
    dropped = torch.cat([torch.zeros((1, n_writers, len(graph.readers))), _dropped(graph, keep)]).to(model.device)
    ids = torch.cat([batch.corrupted_ids, *[batch.clean_ids] * (groups - 1)])
    inputs = _wide_inputs(model, ids, torch.cat([batch.attention_mask] * groups), k)
    real = batch.attention_mask.to(model.device)
    last = batch.last.repeat(groups).to(model.device)
    answer = batch.answer_ids.repeat(groups).to(model.device)
    wrong = batch.wrong_ids.repeat(groups).to(model.device)
    lm = model.lm
    with model.lock, torch.no_grad():
        with lm.trace(inputs, **remote.trace_options(model.remote)):
            x = lm.layers[0].input
            d, dtype, device = x.shape[-1], x.dtype, x.device
            dropped = dropped.to(device)
            diffs = torch.zeros((n_writers, groups, pairs, seq, d), dtype=dtype, device=device)
            weights = real.to(device=device, dtype=dtype).reshape(pairs, seq, 1)
            count = weights.sum(0).clamp(min=1)
            value = _copy0(x, rows, k).reshape(groups, pairs, seq, d)
            base = (value[0] * weights).sum(0, keepdim=True) / count if mean else value[0]
            diffs[0] = value - base
            writer = 1
            for layer in range(n_layers):
                blk = lm.layers[layer]
                if layer > 0:
                    x = blk.input
                readers = []
                for h in range(k):
                    readers.append(layer * (k + 1) + h)
                before = 1 + layer * (k + 1)
                delta = _ablation_delta(dropped, diffs, before, readers)  # (rows, k, seq, d)
                xa = (x.reshape(rows, k, seq, d) + delta).reshape(rows * k, seq, d)
                blk.attn.input = xa if attn_norm is None else getattr(blk, attn_norm)(xa)
                o = getattr(blk.attn, attn_out)
                z = o.input.reshape(rows, k, seq, k, -1)
                eye = torch.eye(k, dtype=dtype, device=device).reshape(1, k, 1, k, 1)
                combined = (z * eye).sum(1)
                weight = o.weight.t() if transposed else o.weight
                heads = torch.einsum("nshe,dhe->nhsd", combined, weight.reshape(d, k, -1))
                o.input = _widen(combined.reshape(rows, seq, -1), k)
                if attn_post_norm is None:
                    written = o.output
                else:
                    post = getattr(blk, attn_post_norm)
                    factor = _rms_factor(post.weight, post.input, offset, post_eps)
                    heads = heads * _copy0(factor, rows, k).unsqueeze(1)
                    written = post.output
                for h in range(k):
                    value = heads[:, h].reshape(groups, pairs, seq, d)
                    base = (value[0] * weights).sum(0, keepdim=True) / count if mean else value[0]
                    diffs[writer] = value - base
                    writer += 1
                source_x = x + written if sequential else x
                before = 1 + layer * (k + 1) + (k if sequential else 0)
                delta = _ablation_delta(dropped, diffs, before, [layer * (k + 1) + k])[:, 0]
                xm = _copy0(source_x, rows, k) + delta
                blk.mlp.input = xm if pre_mlp_norm is None else getattr(blk, pre_mlp_norm)(xm)
                out = _first(blk.mlp.output)
                blk.mlp.output = _widen(out, k)
                if mlp_post_norm is not None:
                    post = getattr(blk, mlp_post_norm)
                    out = _copy0(post.output, rows, k)
                value = out.reshape(groups, pairs, seq, d)
                base = (value[0] * weights).sum(0, keepdim=True) / count if mean else value[0]
                diffs[writer] = value - base
                writer += 1
            delta = _ablation_delta(dropped, diffs, n_writers, [n_layers * (k + 1)])[:, 0]
            lm.final_norm.input = lm.final_norm.input + _widen(delta, k)
            h_final = _copy0(lm.unembed.input, rows, k)
            lm.unembed.input = h_final[torch.arange(rows, device=device), last.to(device)].unsqueeze(1)
            logits = _soft_cap(lm.unembed.output[:, 0], cap).double()
            picked = torch.arange(rows, device=device)
            ld = logits[picked, answer.to(device)] - logits[picked, wrong.to(device)]
            lds = nnsight.save(ld.reshape(groups, pairs))
    return lds.detach().cpu()


def faithfulness_curve_traced(
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
    """``circuit_runs.faithfulness_curve`` from traced ablation runs: the full circuit is the clean run and
    group 0 of the first trace the corrupted run, so LD_clean and LD_corr come from the same traces."""
    scores, sizes = curve_sizes(graph, scores, sizes)
    keep = np.stack([np.ones(len(graph.edges), dtype=bool)] + [top_edges(scores, int(n)) for n in sizes])
    lds, ld_corr = ablate_traced(model, batch, graph, keep, source, max_rows=max_rows, progress=progress,
                                 with_corrupted=True)
    return curve_from_diffs(sizes, lds[1:], lds[0], ld_corr)
