"""Circuits: edge attribution over a whole task, circuits of the top edges, verified by ablation.

A task (``circuit_tasks.TASKS``: IOI, subject-verb agreement, greater-than, country -> capital, or the
user's CSV of pairs) is scored edge by edge on the graph of ``circuit_graph`` (embeddings, every
attention head, every MLP, the logits; edges through the residual stream) three ways
(``edge_attribution``): plain gradients (EAP; Syed, Rager & Conmy 2023), LRP rules (RelP; Jafari et al.
2025, "RelP: Faithful and Efficient Circuit Discovery via Relevance Patching") and integrated gradients
(EAP-IG; Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness"), each averaged over the task's
pairs. Each method's top-n edges form circuits of growing size; every circuit is checked by real ablation
runs (``circuit_runs.faithfulness_curve``: every edge outside it carries the corrupted or the mean
activation), giving the faithfulness curve of the task metric ``M`` (0 corrupted, 1 clean;
``circuit_tasks.task_metric``), its normalised area over log size and the smallest circuit recovering 80 %.

Compare the curves: a method whose circuits recover the metric with fewer edges ranks edges better.

On a remote model (``LoadedModel.remote``: NDIF) the attribution and the ablation runs are nnsight traces
(``circuit_trace``) that run there: EAP, RelP (its LN, identity and half rules as value-preserving edits
inside the trace; the optional AH rule is refused) and EAP-IG, one trace per method and one per chunk of
circuits, and only scores and logit differences come back. Local models keep the hook-based path
(``edge_attribution``, ``circuit_runs``), which the traces equal to float round-off
(tests/test_circuit_trace.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from workbench import circuit_runs, circuit_tasks, circuit_trace, edge_attribution
from workbench.analyses.base import Analysis
from workbench.circuit_graph import Graph, graph_for
from workbench.errors import BadRequest
from workbench.interventions import Rules
from workbench.prompt_pairs import PromptPair

NAME = "circuit"
VERSION = 1
METHODS = edge_attribution.METHODS  # ("atp", "relp", "ig")
METHOD_TITLES = {"atp": "EAP (plain gradients)", "relp": "RelP (LRP rules)", "ig": "EAP-IG (integrated gradients)"}
TARGET = 0.8  # the share of the metric a "recovering" circuit reaches
MAX_PAIRS = 200
MAX_SIZES = 40


def default_sizes(n_edges: int) -> tuple[int, ...]:
    """0, then 1, 2, 5 per decade up to every edge: about 3 sizes a decade on a log axis."""
    sizes, decade = [0], 1
    while decade < n_edges:
        sizes += [s for s in (decade, 2 * decade, 5 * decade) if s < n_edges]
        decade *= 10
    return tuple(sizes + [n_edges])


@dataclass(frozen=True)
class CircuitRequest:
    task: str = "ioi"
    n_pairs: int = 20
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    ig_steps: int = 5  # EAP-IG's interpolation points
    ah_rule: bool = False  # RelP's optional AH rule (attention probabilities held constant)
    source: str = "corrupted"  # what an ablated edge carries: the corrupted run's activation, or the dataset mean
    sizes: tuple[int, ...] = ()  # circuit sizes (edges) on the curve, besides 0 and every edge; () = default_sizes
    csv_name: str = ""  # the uploaded file's name, for the csv task
    pairs: tuple[tuple[str, ...], ...] = ()  # the csv task's rows: (clean, corrupted, answer, wrong)

    def __post_init__(self):
        if self.task not in circuit_tasks.TASKS:
            raise BadRequest(f"Unknown task {self.task[:30]!r}. Tasks: {', '.join(circuit_tasks.TASKS)}.")
        if not 1 <= self.n_pairs <= MAX_PAIRS:
            raise BadRequest(f"n_pairs must be between 1 and {MAX_PAIRS}.")
        if not self.methods or len(set(self.methods)) != len(self.methods) or set(self.methods) - set(METHODS):
            raise BadRequest(f"methods: one or more of {', '.join(METHODS)}, each once.")
        if not 1 <= self.ig_steps <= 100:
            raise BadRequest("ig_steps must be between 1 and 100.")
        if self.source not in circuit_runs.SOURCES:
            raise BadRequest(f"source must be one of {', '.join(circuit_runs.SOURCES)}.")
        if len(self.sizes) > MAX_SIZES or any(s < 0 for s in self.sizes):
            raise BadRequest(f"sizes: at most {MAX_SIZES} circuit sizes, none negative.")
        if (self.task == "csv") != bool(self.pairs):
            raise BadRequest("The csv task needs its pairs (upload a CSV); other tasks generate their own.")
        if any(len(row) != 4 for row in self.pairs):
            raise BadRequest("Every CSV pair has four cells: clean, corrupted, answer, wrong.")


@dataclass(frozen=True, eq=False)
class CircuitResult:
    model_name: str
    task: str
    n_layers: int
    n_heads: int
    parallel: bool
    methods: np.ndarray  # (method,) str
    clean: np.ndarray  # (pair,) str: the clean prompts
    corrupted: np.ndarray  # (pair,) str
    answers: np.ndarray  # (pair,) str
    wrongs: np.ndarray  # (pair,) str
    ld_clean: np.ndarray  # (pair,) logit difference answer - wrong on the clean run
    ld_corrupted: np.ndarray  # (pair,)
    edge_scores: np.ndarray  # (method, edge) float32, Graph.edges order: first-order change of M, whole task
    node_scores: np.ndarray  # (method, writer) float32, Graph.writers order
    node_scores_per_pair: np.ndarray  # (method, pair, writer) float32 (their mean over pairs is node_scores)
    sizes: np.ndarray  # (size,) int64 circuit sizes in edges
    curves: np.ndarray  # (method, size) float64: M of each method's top-n circuit by ablation
    areas: np.ndarray  # (method,) normalised area under the curve over log size
    recovering: np.ndarray  # (method,) int64 smallest tested size with M >= 0.8; -1: none
    attribution_seconds: np.ndarray  # (method,) wall seconds of the edge attribution
    curve_seconds: np.ndarray  # (method,) wall seconds of the curve's ablation runs
    source: str
    rules: str  # how the gradients were taken, in words

    def __post_init__(self):
        n_m, n_p = len(self.methods), len(self.clean)
        n_edges, n_writers, n_sizes = len(self.graph.edges), len(self.graph.writers), len(self.sizes)
        shapes = {"corrupted": (n_p,), "answers": (n_p,), "wrongs": (n_p,), "ld_clean": (n_p,), "ld_corrupted": (n_p,),
                  "edge_scores": (n_m, n_edges), "node_scores": (n_m, n_writers),
                  "node_scores_per_pair": (n_m, n_p, n_writers), "curves": (n_m, n_sizes), "areas": (n_m,),
                  "recovering": (n_m,), "attribution_seconds": (n_m,), "curve_seconds": (n_m,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"CircuitResult.{name}: shape {getattr(self, name).shape}, expected {shape}")

    @property
    def graph(self) -> Graph:
        return Graph(self.n_layers, self.n_heads, self.parallel)


def pairs_of(model, request: CircuitRequest, settings) -> list[PromptPair]:
    if request.task == "csv":
        return [PromptPair(*row) for row in request.pairs][: request.n_pairs]
    return circuit_tasks.task_pairs(model, request.task, request.n_pairs, request.seed, settings)


def check(request: CircuitRequest, settings) -> None:
    from workbench import prompts

    for row in request.pairs:
        prompts.check_text(row[0], settings)
        prompts.check_text(row[1], settings)


def _traced(model) -> bool:
    """Whether the analysis runs as nnsight traces (``circuit_trace``): for a model on NDIF."""
    return getattr(model, "remote", None) is not None


def run(ctx, request: CircuitRequest, progress) -> CircuitResult:
    model = ctx.model
    traced = _traced(model)
    if traced and "relp" in request.methods and request.ah_rule:
        raise BadRequest("RelP's AH rule swaps the model's attention function, which cannot run on NDIF; "
                         "switch the AH rule off for a remote model.")
    progress(0.0, f"Building {request.n_pairs} {request.task} pairs")
    pairs = pairs_of(model, request, ctx.settings)
    batch = circuit_tasks.encode_pairs(model, pairs, ctx.settings)
    graph = graph_for(model)
    # the empty and the full circuit always anchor the curve (M = 0 and 1 with the corrupted source)
    wanted = request.sizes or default_sizes(len(graph.edges))
    sizes = tuple(sorted({0, len(graph.edges), *(min(s, len(graph.edges)) for s in wanted)}))
    rules = Rules(ln=True, identity=True, half=True, attention=request.ah_rule)
    n = len(request.methods)
    attributions, curves, curve_seconds = [], [], []
    with model.lock:
        for i, method in enumerate(request.methods):
            def report(fraction, message, i=i, title=METHOD_TITLES[method]):
                progress((i + 0.5 * (fraction or 0.0)) / n, f"{title}: {message}")

            if traced:
                found = circuit_trace.attribute_edges_traced(model, batch, graph, method, rules=rules,
                                                             steps=request.ig_steps, progress=report)
            else:
                found = edge_attribution.attribute_edges(model, batch, graph, method, rules=rules,
                                                         steps=request.ig_steps, progress=report)
            attributions.append(found)
            start = time.perf_counter()
            curve = (circuit_trace.faithfulness_curve_traced if traced else circuit_runs.faithfulness_curve)(
                model, batch, graph, found.edge_scores, sizes, request.source,
                progress=lambda f, m, i=i, title=METHOD_TITLES[method]: progress((i + 0.5 + 0.5 * f) / n,
                                                                                 f"{title}: {m}"))
            curve_seconds.append(time.perf_counter() - start)
            curves.append(curve)
    tested = curves[0].sizes
    recovering = [circuit_runs.smallest_recovering(c.sizes, c.metric, TARGET) for c in curves]
    rule_words = "RelP rules: LN, identity, half" + (", AH" if request.ah_rule else "") + \
        f"; IG: {request.ig_steps} steps; ablated edges carry the {request.source} activation"
    if getattr(model, "remote", None) is not None:
        rule_words += "; run as nnsight traces on NDIF"
    first = attributions[0]
    return CircuitResult(
        model_name=model.name, task=request.task if request.task != "csv" else f"csv: {request.csv_name}",
        n_layers=graph.n_layers, n_heads=graph.n_heads, parallel=graph.parallel,
        methods=np.array(request.methods),
        clean=np.array([p.clean for p in pairs]), corrupted=np.array([p.corrupted for p in pairs]),
        answers=np.array([p.answer for p in pairs]), wrongs=np.array([p.wrong for p in pairs]),
        ld_clean=first.ld_clean.astype(np.float64), ld_corrupted=first.ld_corrupted.astype(np.float64),
        edge_scores=np.stack([a.edge_scores for a in attributions]).astype(np.float32),
        node_scores=np.stack([a.node_scores for a in attributions]).astype(np.float32),
        node_scores_per_pair=np.stack([a.node_scores_per_pair for a in attributions]).astype(np.float32),
        sizes=np.asarray(tested, dtype=np.int64), curves=np.stack([c.metric for c in curves]).astype(np.float64),
        areas=np.array([circuit_runs.area(c.sizes, c.metric, len(graph.edges)) for c in curves]),
        recovering=np.array([-1 if r is None else r for r in recovering], dtype=np.int64),
        attribution_seconds=np.array([a.seconds for a in attributions]), curve_seconds=np.array(curve_seconds),
        source=request.source, rules=rule_words,
    )


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Circuits", Request=CircuitRequest, Result=CircuitResult, run=run, check=check,
)
