"""Figures of circuits: the layer-ordered graph, faithfulness curves, and the graph as JSON.

Plain functions on plain data (``circuit_graph.Node`` tuples, an ``(edge, 2)`` index array and one score
per edge), so any analysis that scores the edges of a ``circuit_graph.Graph`` can draw them. The graph
follows the edge-level circuits of Syed, Rager & Conmy (2023, EAP), Hanna, Pezzelle & Belinkov (2024,
EAP-IG) and Jafari et al. (2025, RelP); the faithfulness curve is Hanna et al.'s (2024) metric recovered
as a function of circuit size.

``graph_figure``
    Node-link diagram ordered by layer: ``x`` is the column of a node (``embed``, then per block one column
    of heads and one of the MLP, then ``logits``), heads are spread vertically within their column, the
    MLP, ``embed`` and ``logits`` sit on the middle line (squares and diamonds; heads are circles). Only
    edges with ``|score| >= threshold`` are drawn, at most ``max_edges`` of them (the largest |score|
    first; the subtitle says how many were left out). Edge width grows with |score| in four buckets
    relative to the largest drawn |score|; colour gives the sign (Okabe-Ito blue positive, vermillion
    negative: colour-blind safe). Edges are drawn as one line trace per (sign, width bucket[, touches a
    highlighted node]) with ``None`` breaks, never one trace per edge, plus one invisible marker per drawn
    edge at its middle that carries the edge's hover. A node's hover gives its total score: the sum of
    its outgoing edges' scores over ALL edges (its node attribution, for writers) or, for ``logits``, the
    sum of its incoming edges (a caller may pass ``node_scores`` instead). Nodes carry their name as
    ``customdata`` (what a click on the chart reports).
``curve_figure``
    Faithfulness curves: circuit size in edges on a log axis, the task metric recovered on y, one line per
    method, a dashed line at 0.8. A size of 0 (the empty circuit) has no place on a log axis and is left
    out of the line; its value is in the hover of the method's first point.
``json_export`` / ``graph_from_json``
    The graph as JSON text and back (exactly: scores round-trip bit for bit). Schema
    (``JSON_FORMAT``, ``JSON_VERSION``)::

        {
          "format": "layerlens-circuit-graph", "version": 1,
          "model": str,                     # the model's display name
          "method": str,                    # how the edges were scored, e.g. "atp", "relp", "ig"
          "rules": {...},                   # the method's settings (RelP rule toggles, IG steps, ...)
          "task": {...},                    # the task: name, pairs, seed, source ... (caller's JSON object)
          "metric": str,                    # what a score measures
          "threshold": float | null,        # the display threshold when exported, if any
          "nodes": [{"name": "a3.h1", "kind": "head", "layer": 3, "head": 1, "score": float | null}, ...],
          "edges": [{"source": "embed", "target": "a3.h1", "score": float | null}, ...]
        }

    ``nodes`` are in topological order (``circuit_graph.Graph.nodes``), ``kind`` one of embed / head / mlp /
    logits, ``layer`` -1 for embed and n_layers for logits, ``head`` null except for heads; ``score`` is the
    node's total score as in the graph's hover (null where not finite); edges are every scored edge, in the
    order given, ``score`` null where not finite. No NaN or Infinity appears in the text (strict JSON).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.circuit_graph import Node
from workbench.errors import BadRequest
from workbench.figures import LINE_COLORS, plain
from workbench.figures.axes import decade_ticks, keep_labels

POSITIVE, NEGATIVE = "#0072B2", "#D55E00"  # Okabe-Ito blue and vermillion
INACTIVE = "#bbbbbb"  # a node none of whose edges is drawn
MAX_EDGES_DRAWN = 500
WIDTHS = (1.25, 2.25, 3.5, 5.0)  # px per bucket of |score| / largest drawn |score|: [0, .25), ..., [.75, 1]
DIM_OPACITY = 0.15  # edges away from a highlighted node
EDGE_OPACITY = 0.85
SYMBOLS = {"embed": "diamond", "head": "circle", "mlp": "square", "logits": "diamond"}
TARGET = 0.8  # the share of the metric a "faithful" circuit recovers
JSON_FORMAT, JSON_VERSION = "layerlens-circuit-graph", 1
METRIC = ("EAP-style edge score: (upstream output, clean - corrupted) . d(task metric)/d(downstream input), "
          "averaged over the task's pairs; the task metric is 0 on the corrupted and 1 on the clean runs")


# ------------------------------------------------------------------ layout


def node_columns(nodes: Sequence[Node]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per node its ``(x, y)`` in the diagram, and the label of every column ``x = 0, 1, ...``."""
    n_layers = 1 + max((n.layer for n in nodes if n.kind in ("head", "mlp")), default=-1)
    n_heads = 1 + max((n.head for n in nodes if n.kind == "head"), default=0)
    x = np.zeros(len(nodes))
    y = np.zeros(len(nodes))
    for i, node in enumerate(nodes):
        if node.kind == "embed":
            x[i] = 0
        elif node.kind == "head":
            x[i] = 2 + 2 * node.layer
            y[i] = 1.0 - 2.0 * node.head / (n_heads - 1) if n_heads > 1 else 0.0  # head 0 on top
        elif node.kind == "mlp":
            x[i] = 3 + 2 * node.layer
        else:
            x[i] = 3 + 2 * n_layers
    # an empty column after embed and before logits keeps their labels apart from the blocks'
    labels = ["embed", "", *(f"{part}{layer}" for layer in range(n_layers) for part in ("a", "m")), "", "logits"]
    return x, y, labels


def node_totals(n_nodes: int, edges: np.ndarray, scores: np.ndarray, nodes: Sequence[Node]) -> np.ndarray:
    """Per node the sum of its outgoing edges' scores; for ``logits`` (no outgoing edge) its incoming ones.
    Non-finite scores count as 0."""
    clean = np.where(np.isfinite(scores), scores, 0.0).astype(np.float64)
    out = np.bincount(edges[:, 0], weights=clean, minlength=n_nodes)
    incoming = np.bincount(edges[:, 1], weights=clean, minlength=n_nodes)
    readers_only = np.array([n.kind == "logits" for n in nodes])
    return np.where(readers_only, incoming, out)


def _check_graph(nodes: Sequence[Node], edges, scores) -> tuple[np.ndarray, np.ndarray]:
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(edges):
        raise ValueError(f"{len(scores)} scores for {len(edges)} edges")
    if len(edges) and (edges.min() < 0 or edges.max() >= len(nodes)):
        raise ValueError("an edge names a node index outside the node list")
    return edges, scores


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise BadRequest("The edge threshold must be a number of 0 or more.")
    return float(threshold)


def _names(highlight: str | Iterable[str] | None) -> set[str]:
    if highlight is None:
        return set()
    return {highlight} if isinstance(highlight, str) else set(highlight)


# ------------------------------------------------------------------ the graph


def drawn_edges(scores: np.ndarray, threshold: float, max_edges: int = MAX_EDGES_DRAWN) -> tuple[np.ndarray, int]:
    """Indices of the edges to draw (|score| >= threshold, largest |score| first, at most ``max_edges``)
    and how many edges pass the threshold."""
    magnitude = np.abs(scores)
    above = np.flatnonzero(np.isfinite(magnitude) & (magnitude >= threshold))
    order = above[np.argsort(-magnitude[above], kind="stable")]
    return order[:max_edges], len(above)


def graph_figure(nodes: Sequence[Node], edges, scores, threshold: float, highlight: str | Iterable[str] | None = None,
                 *, node_scores=None, max_edges: int = MAX_EDGES_DRAWN, title: str | None = None) -> go.Figure:
    """The layer-ordered circuit graph (see the module docstring). ``edges``: (edge, 2) indices into
    ``nodes`` (writer, reader); ``scores``: (edge,); ``highlight``: node name(s) whose edges stay opaque
    while the others are dimmed; ``title``: e.g. the model and task (shown literally)."""
    threshold = _check_threshold(threshold)
    edges, scores = _check_graph(nodes, edges, scores)
    totals = (node_totals(len(nodes), edges, scores, nodes) if node_scores is None
              else np.asarray(node_scores, dtype=np.float64).reshape(-1))
    if len(totals) != len(nodes):
        raise ValueError(f"{len(totals)} node scores for {len(nodes)} nodes")
    x, y, labels = node_columns(nodes)
    keep, n_above = drawn_edges(scores, threshold, max_edges)
    marked = _names(highlight)
    index = {node.name: i for i, node in enumerate(nodes)}
    marked_idx = np.array(sorted(index[name] for name in marked if name in index), dtype=np.int64)

    fig = go.Figure()
    largest = float(np.abs(scores[keep]).max()) if len(keep) else 1.0
    bucket = np.minimum((np.abs(scores[keep]) / largest * len(WIDTHS)).astype(int), len(WIDTHS) - 1)
    touches = (np.isin(edges[keep, 0], marked_idx) | np.isin(edges[keep, 1], marked_idx) if len(marked_idx)
               else np.zeros(len(keep), dtype=bool))
    shown_legend = set()
    for sign, colour, label in ((1, POSITIVE, "positive edge"), (-1, NEGATIVE, "negative edge")):
        for b, width in enumerate(WIDTHS):
            for near in ((False, True) if len(marked_idx) else (False,)):
                chosen = keep[(np.sign(scores[keep]) == sign) & (bucket == b) & (touches == near)]
                if not len(chosen):
                    continue
                low, high = b / len(WIDTHS) * largest, (b + 1) / len(WIDTHS) * largest
                fig.add_trace(go.Scatter(
                    x=_segments(x, edges[chosen]), y=_segments(y, edges[chosen]), mode="lines",
                    line={"color": colour, "width": width},
                    opacity=EDGE_OPACITY if near or not len(marked_idx) else DIM_OPACITY,
                    name=label, legendgroup=label, showlegend=label not in shown_legend, hoverinfo="skip",
                    meta={"sign": sign, "bucket": b, "edges": len(chosen), "score_range": [low, high]},
                ))
                shown_legend.add(label)
    if len(keep):  # one invisible marker per drawn edge, at its middle: the edge's hover
        names = [f"{nodes[w].name} → {nodes[r].name}" for w, r in edges[keep]]
        fig.add_trace(go.Scatter(
            x=(x[edges[keep, 0]] + x[edges[keep, 1]]) / 2, y=(y[edges[keep, 0]] + y[edges[keep, 1]]) / 2,
            mode="markers", marker={"size": 6, "color": INACTIVE, "opacity": 0}, showlegend=False,
            name="edge scores", customdata=np.array(names, dtype=object), text=[f"{s:+.4g}" for s in scores[keep]],
            hovertemplate="%{customdata}<br>score %{text}<extra></extra>",
        ))
    active = np.zeros(len(nodes), dtype=bool)
    active[edges[keep].ravel()] = True
    degree = np.bincount(edges[keep].ravel(), minlength=len(nodes))
    finite = np.abs(totals[np.isfinite(totals)])
    biggest = float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
    for kind in ("embed", "head", "mlp", "logits"):
        members = [i for i, n in enumerate(nodes) if n.kind == kind]
        if not members:
            continue
        members = np.array(members)
        colours = [(POSITIVE if totals[i] >= 0 else NEGATIVE) if active[i] else INACTIVE for i in members]
        sizes = [7 + 11 * min(abs(totals[i]) / biggest, 1.0) if active[i] and np.isfinite(totals[i]) else 5
                 for i in members]
        outline = [3 if nodes[i].name in marked else 0.5 for i in members]
        what = ("node score" if node_scores is not None
                else "sum of its incoming edges" if kind == "logits" else "sum of its outgoing edges")
        hover = [f"{nodes[i].name}<br>total score {totals[i]:+.4g} ({what})"
                 f"<br>{degree[i]} drawn edge{'s' if degree[i] != 1 else ''}" for i in members]
        fig.add_trace(go.Scatter(
            x=x[members], y=y[members], mode="markers+text" if marked else "markers",
            marker={"symbol": SYMBOLS[kind], "color": colours, "size": sizes,
                    "line": {"color": "#000000", "width": outline}},
            text=[nodes[i].name if nodes[i].name in marked else "" for i in members], textposition="top center",
            customdata=np.array([nodes[i].name for i in members], dtype=object), hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>", name={"embed": "embeddings", "head": "attention heads",
                                                              "mlp": "MLPs", "logits": "logits"}[kind],
            showlegend=False,
        ))
    subtitle = (f"{len(keep)} of {n_above} edges with |score| ≥ {threshold:.3g} drawn "
                f"(the {max_edges} largest; {n_above - len(keep)} left out)" if n_above > len(keep)
                else f"all {n_above} edges with |score| ≥ {threshold:.3g} drawn") + f", of {len(edges)} scored"
    ticks = _ticks(len(labels))
    fig.update_layout(
        title={"text": plain(title) if title else "Circuit graph", "subtitle": {"text": plain(subtitle)}},
        xaxis={"title": "layer (embeddings, then per block: attention heads, MLP; then logits)",
               "tickmode": "array", "tickvals": ticks, "ticktext": [labels[t] for t in ticks],
               "showgrid": False, "zeroline": False, "range": [-1.4, len(labels) + 0.2]},  # room for end labels
        yaxis={"visible": False, "range": [-1.35, 1.35]},
        legend={"orientation": "h", "y": -0.2}, hovermode="closest", height=520, margin={"t": 90},
    )
    keep_labels(fig, xaxis=labels)
    if not len(keep):
        fig.add_annotation(text=f"No edge has |score| ≥ {threshold:.3g}; lower the threshold.", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=1.0)
    return fig


def _segments(coord: np.ndarray, pairs: np.ndarray) -> list:
    """Coordinates of one polyline through every edge: start, end, None (a break), ..."""
    out: list = []
    for w, r in pairs:
        out += [float(coord[w]), float(coord[r]), None]
    return out


def _ticks(n_columns: int, most: int = 24) -> list[int]:
    """Tick positions: embed, the attention column of every k-th block, logits."""
    n_layers = (n_columns - 4) // 2
    step = max(1, -(-n_layers // most))
    return [0, *(2 + 2 * layer for layer in range(0, n_layers, step)), n_columns - 1]


# ------------------------------------------------------------------ faithfulness curves


def curve_figure(curves: Mapping[str, tuple], title: str | None = None, target: float = TARGET) -> go.Figure:
    """Metric recovered vs circuit size (edges, log axis), one line per method, a dashed line at ``target``.
    ``curves[method] = (sizes, values)`` with sizes in edges (0 = the empty circuit, shown in the hover only)."""
    fig = go.Figure()
    positive_sizes = []
    for i, (method, (sizes, values)) in enumerate(curves.items()):
        sizes = np.asarray(sizes, dtype=np.float64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(sizes) != len(values):
            raise ValueError(f"{method}: {len(sizes)} sizes for {len(values)} values")
        empty = values[sizes == 0]
        shown = sizes > 0
        note = f"<br>empty circuit: {empty[0]:.3f}" if len(empty) else ""
        positive_sizes.append(sizes[shown])
        fig.add_trace(go.Scatter(
            x=sizes[shown], y=values[shown], mode="lines+markers", name=plain(method),
            line={"color": LINE_COLORS[i % len(LINE_COLORS)]}, marker={"size": 5},
            hovertemplate=f"{plain(method)}: %{{x:,.0f}} edges, metric %{{y:.3f}}{note}<extra></extra>",
        ))
    every = np.concatenate(positive_sizes) if positive_sizes else np.array([])
    fig.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=target, y1=target,
                  line={"color": "#777777", "dash": "dash"})
    fig.add_annotation(text=f"{target:.0%} of the metric", xref="paper", x=0.01, xanchor="left", yref="y",
                       y=target, yanchor="bottom", showarrow=False)
    fig.update_xaxes(title="circuit size (edges)", **decade_ticks(every))
    every_value = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for _, v in curves.values()] or [[]])
    every_value = every_value[np.isfinite(every_value)]
    low = min(0.0, float(every_value.min(initial=0.0))) - 0.05
    high = max(1.0, float(every_value.max(initial=1.0))) + 0.05
    fig.update_yaxes(title="task metric recovered (0 corrupted, 1 clean)", range=[low, high])
    fig.update_layout(title=plain(title) if title else "Faithfulness: metric recovered by circuit size",
                      hovermode="closest", height=420)
    if not fig.data:
        fig.add_annotation(text="No curve to show.", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


# ------------------------------------------------------------------ JSON


def json_export(nodes: Sequence[Node], edges, scores, *, model: str, task: Mapping, method: str, rules: Mapping,
                node_scores=None, threshold: float | None = None, indent: int | None = None) -> str:
    """The graph as JSON text (schema in the module docstring)."""
    edges, scores = _check_graph(nodes, edges, scores)
    totals = (node_totals(len(nodes), edges, scores, nodes) if node_scores is None
              else np.asarray(node_scores, dtype=np.float64).reshape(-1))
    document = {
        "format": JSON_FORMAT, "version": JSON_VERSION, "model": str(model), "method": str(method),
        "rules": dict(rules), "task": dict(task), "metric": METRIC,
        "threshold": None if threshold is None else _check_threshold(threshold),
        "nodes": [{"name": n.name, "kind": n.kind, "layer": n.layer, "head": n.head, "score": _number(t)}
                  for n, t in zip(nodes, totals, strict=True)],
        "edges": [{"source": nodes[w].name, "target": nodes[r].name, "score": _number(s)}
                  for (w, r), s in zip(edges.tolist(), scores.tolist(), strict=True)],
    }
    try:
        return json.dumps(document, indent=indent, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the task or rules are not plain JSON data ({exc})") from None


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def graph_from_json(text: str | bytes) -> tuple[tuple[Node, ...], np.ndarray, np.ndarray, dict]:
    """``json_export``'s text back as ``(nodes, edges, scores, rest)``: scores as float64 (NaN where the
    file has null), ``rest`` every other top-level field. Raises BadRequest for anything else."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The file is not JSON text.") from None
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise BadRequest("The file is not a LayerLens circuit graph.")
    if document.get("version") != JSON_VERSION:
        raise BadRequest(f"Unsupported circuit graph version; this workbench reads version {JSON_VERSION}.")
    try:
        nodes = tuple(Node(str(n["name"]), str(n["kind"]), int(n["layer"]),
                           None if n["head"] is None else int(n["head"])) for n in document["nodes"])
        index = {node.name: i for i, node in enumerate(nodes)}
        edges = np.array([(index[e["source"]], index[e["target"]]) for e in document["edges"]],
                         dtype=np.int64).reshape(-1, 2)
        scores = np.array([np.nan if e["score"] is None else float(e["score"]) for e in document["edges"]],
                          dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise BadRequest("The circuit graph's nodes or edges are malformed.") from None
    rest = {k: v for k, v in document.items() if k not in ("nodes", "edges")}
    return nodes, edges, scores, rest


# ---------------------------------------------------------------------- an analysis result (analyses.circuit)

DEFAULT_SHOWN_EDGES = 100  # the default threshold shows about this many edges


def default_threshold(scores, shown: int = DEFAULT_SHOWN_EDGES) -> float:
    """The |score| of the ``shown``-th largest edge (so about that many are drawn)."""
    magnitudes = np.sort(np.abs(np.asarray(scores, dtype=np.float64)))[::-1]
    magnitudes = magnitudes[np.isfinite(magnitudes)]
    if not len(magnitudes):
        return 0.0
    return float(magnitudes[min(shown, len(magnitudes)) - 1])


def result_graph(result, method: str | None = None, threshold: float | None = None, highlight=None) -> go.Figure:
    """The circuit graph of one of ``result``'s methods (default: the first) at ``threshold`` (default:
    about ``DEFAULT_SHOWN_EDGES`` edges)."""
    methods = [str(m) for m in result.methods]
    index = methods.index(method) if method is not None else 0
    graph = result.graph
    scores = result.edge_scores[index].astype(np.float64)
    threshold = default_threshold(scores) if threshold is None else threshold
    totals = np.full(len(graph.nodes), np.nan)
    totals[: len(graph.writers)] = result.node_scores[index]  # writers come first, logits last
    totals[-1] = scores[graph.edges[:, 1] == len(graph.nodes) - 1].sum()
    return graph_figure(graph.nodes, graph.edges, scores, threshold, highlight, node_scores=totals,
                        title=f"Circuit of {plain(result.model_name)} on {plain(result.task)}: edges by "
                              f"{methods[index]} (mean over {len(result.clean)} pairs)")


def result_curves(result) -> go.Figure:
    """The faithfulness curves of every method in ``result``, with each curve's area and 80 % size."""
    curves = {}
    for i, method in enumerate(result.methods):
        found = "none" if result.recovering[i] < 0 else f"{int(result.recovering[i])} edges"
        label = f"{method} (area {result.areas[i]:.2f}, 80 %: {found})"
        curves[label] = (result.sizes, result.curves[i])
    return curve_figure(curves, title=f"Faithfulness by ablation: {plain(result.model_name)}, {plain(result.task)}, "
                                      f"{len(result.clean)} pairs, ablated edges carry the {result.source} activation")


def node_pairs_figure(result, method: str, node: str) -> go.Figure:
    """One writer node's score on every pair of the task (their mean is its task-level score)."""
    graph = result.graph
    index = [str(m) for m in result.methods].index(method)
    writer = [n.name for n in graph.writers].index(node)
    values = result.node_scores_per_pair[index, :, writer].astype(np.float64)
    colors = [LINE_COLORS[0] if v >= 0 else LINE_COLORS[1] for v in values]
    labels = [f"{i + 1}" for i in range(len(values))]
    fig = go.Figure(go.Bar(x=labels, y=values, marker={"color": colors},
                           customdata=np.array([plain(str(c)) for c in result.clean], dtype=object),
                           hovertemplate="pair %{x}: %{y:+.4g}<br>%{customdata}<extra></extra>"))
    fig.add_hline(y=float(result.node_scores[index, writer]), line={"dash": "dash", "color": "#000000"},
                  annotation_text="mean", annotation_position="top left")
    fig.update_layout(title=f"{plain(node)}: score per pair ({method}, {plain(result.task)})", height=320,
                      xaxis={"title": "pair", "type": "category"}, yaxis_title="node score (change of the task metric)",
                      margin={"l": 70, "r": 20, "t": 60, "b": 50})
    return fig


def attention_figure(tokens, pattern, title: str) -> go.Figure:
    """One head's attention probabilities (query row, key column) on one prompt."""
    from workbench.figures import SEQUENTIAL, display_token
    from workbench.figures.axes import token_axis

    pattern = np.asarray(pattern, dtype=np.float64)
    shown = [display_token(str(t)) for t in tokens]
    fig = go.Figure(go.Heatmap(z=pattern, x=np.arange(len(tokens)), y=np.arange(len(tokens)), zmin=0.0, zmax=1.0,
                               colorscale=SEQUENTIAL, colorbar={"title": {"text": "attention"}},
                               hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=plain(title), xaxis=token_axis(tokens, "key token"),
                      yaxis={**token_axis(tokens, "query token"), "autorange": "reversed"},
                      height=max(360, 18 * len(tokens) + 160), margin={"l": 90, "r": 20, "t": 60, "b": 90})
    return keep_labels(fig, xaxis=shown, yaxis=shown)


FIGURES = {"graph": result_graph, "curves": result_curves}
