"""Circuits page: edge attribution over a task (EAP, RelP, EAP-IG), faithfulness by ablation, the graph.

Widgets -> request -> service -> figures; nothing is computed here. A click on a node of the graph
shows its per-pair scores and, for an attention head, its attention pattern on a chosen pair."""

import numpy as np
import streamlit as st

import ui
from workbench import circuit_runs, circuit_tasks
from workbench.analyses.circuit import ANALYSIS, METHOD_TITLES, METHODS, CircuitRequest
from workbench.errors import BadRequest
from workbench.figures import circuit as circuit_figures

model_name = ui.header(
    "Circuits",
    "Which edges between components carry a behaviour, over a whole task. Nodes: the embeddings, every attention "
    "head, every MLP and the logits; an edge is one node's output read by a later node through the residual "
    "stream. Edges are scored by EAP (Syed et al. 2023: plain gradients), RelP (Jafari et al. 2025: LRP rules) and "
    "EAP-IG (Hanna et al. 2024: integrated gradients), averaged over the task's pairs. Each method's top edges form "
    "circuits of growing size, and every circuit is checked by real ablation runs: every edge outside it carries "
    "the corrupted (or mean) activation. The metric is 0 on the corrupted prompts and 1 on the clean ones.")
wb = ui.workbench()
st.info("Tasks: " + "; ".join(f"{ui.escape(name)}: {ui.escape(info.title)}"
                              for name, info in circuit_tasks.TASKS.items())
        + f". A CSV has the columns {ui.escape(', '.join(circuit_tasks.PAIRS_CSV_COLUMNS))} (at most "
          f"{circuit_tasks.PAIRS_CSV_MAX_ROWS:d} rows; clean and corrupted prompts of equal token length, answers "
          "of one token).")
form = ui.RequestForm("ci", CircuitRequest(), skip=("pairs", "csv_name", "sizes"),
                      names={"n_pairs": "pairs", "ig_steps": "steps"},
                      choices={"task": {name: info.title for name, info in circuit_tasks.TASKS.items()},
                               "methods": METHOD_TITLES, "source": circuit_runs.SOURCES},
                      bounds={"n_pairs": (1, 200), "ig_steps": (1, 50), "seed": (0, 10_000)})
with form.box("ci_form", "Find circuits"):
    cols = st.columns([2, 1, 1])
    cols[0].selectbox("Task", list(circuit_tasks.TASKS), key=form.key("task"),
                      format_func=lambda name: circuit_tasks.TASKS[name].title)
    cols[1].number_input("Pairs", 1, 200, key=form.key("n_pairs"), help="Scores are averaged over the pairs.")
    cols[2].number_input("Seed", 0, 10_000, key=form.key("seed"))
    cols = st.columns([2, 1, 1])
    cols[0].multiselect("Methods", list(METHODS), key=form.key("methods"), format_func=METHOD_TITLES.get)
    cols[1].number_input("IG steps", 1, 50, key=form.key("ig_steps"))
    cols[2].radio("Ablated edges carry", circuit_runs.SOURCES, key=form.key("source"),
                  format_func=lambda s: {"corrupted": "the corrupted activation", "mean": "the dataset mean"}[s])
    st.checkbox("RelP: also the AH rule (attention probabilities held constant)", key=form.key("ah_rule"))
    upload = st.file_uploader("Your pairs (CSV, for the task 'Your own pairs')", type=["csv"], key="ci_csv",
                              max_upload_size=4)


def csv_fields() -> dict:
    """The uploaded pairs as request fields (for the csv task)."""
    if st.session_state.get(form.key("task")) != "csv":
        return {}
    if upload is None:
        raise BadRequest("The task 'Your own pairs' needs a CSV: upload one with the columns "
                         f"{', '.join(circuit_tasks.PAIRS_CSV_COLUMNS)}.")
    pairs = circuit_tasks.parse_pairs_csv(upload.getvalue())
    return {"pairs": tuple((p.clean, p.corrupted, p.answer, p.wrong) for p in pairs),
            "csv_name": upload.name.rsplit(".", 1)[0]}


extra = ui.guarded(csv_fields) if form.submitted else {}
result = None
if extra is not None:
    result = form.run(ANALYSIS, "Pick a task and press **Find circuits** (about a minute for 20 IOI pairs and three "
                      "methods on the default model).", **extra)

if result is not None:
    graph = result.graph
    st.caption(f"{len(result.clean):d} pairs; mean logit difference answer − wrong: clean "
               f"{np.mean(result.ld_clean):.2f}, corrupted {np.mean(result.ld_corrupted):.2f}. "
               f"{len(graph.edges):d} edges between {len(graph.nodes):d} nodes. {ui.escape(result.rules)}.")
    ui.chart(ANALYSIS, "curves", result, key="ci_curves")
    rows = {"method": [METHOD_TITLES[str(m)] for m in result.methods],
            "area under the curve (log size)": np.round(result.areas, 3),
            "smallest circuit with 80 % (edges)": [("none tested" if r < 0 else int(r)) for r in result.recovering],
            "attribution s": np.round(result.attribution_seconds, 1),
            "ablation curve s": np.round(result.curve_seconds, 1)}
    st.dataframe(rows, hide_index=True)

    st.subheader("The graph")
    cols = st.columns([1, 3])
    method = cols[0].selectbox("Edges scored by", [str(m) for m in result.methods], key="ci_graph_method",
                               format_func=METHOD_TITLES.get)
    index = [str(m) for m in result.methods].index(method)
    magnitudes = np.sort(np.abs(result.edge_scores[index]))[::-1]
    counts = [n for n in (10, 20, 50, 100, 200, 500) if n <= len(magnitudes)] or [len(magnitudes)]
    shown = cols[1].select_slider("Threshold: |score| of the n-th strongest edge (edges at or above it are drawn)",
                                  counts, value=100 if 100 in counts else counts[-1], key="ci_threshold",
                                  format_func=lambda n: f"{n} edges (|score| ≥ {magnitudes[n - 1]:.3g})")
    threshold = float(magnitudes[shown - 1])
    writers = [n.name for n in graph.writers]
    if st.session_state.get("ci_node_pick") not in writers:  # a new result (another model or task)
        st.session_state["ci_node_pick"] = writers[0]
    selected = st.session_state["ci_node_pick"]
    figure = circuit_figures.result_graph(result, method, threshold, highlight=selected)
    event = ui.plot(figure, "ci_graph", name="circuit-graph", select=True)
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    for point in points:  # a click on a node selects it (the picker below follows; logits has no scores)
        name = point.get("customdata")
        name = name[0] if isinstance(name, list) else name
        # act on a new click only: the chart keeps its selection, and the picker may have moved since
        if isinstance(name, str) and name in writers and name != st.session_state.get("ci_last_click"):
            st.session_state["ci_last_click"] = name
            if name != selected:
                st.session_state["ci_node_pick"] = name
                st.rerun()
    st.download_button(
        "Download the graph as JSON", key="ci_json", mime="application/json",
        file_name=f"circuit-{result.task.split(':')[0]}-{method}.json",
        data=circuit_figures.json_export(
            graph.nodes, graph.edges, result.edge_scores[index], model=result.model_name, method=method,
            rules={"rules": result.rules}, threshold=threshold,
            task={"task": result.task, "pairs": [list(p) for p in zip(result.clean, result.corrupted, result.answers,
                                                                        result.wrongs, strict=True)],
                  "source": result.source}))

    selected = st.selectbox("Node (or click one in the graph)", writers, key="ci_node_pick")
    node = graph.node(selected)
    ui.plot(circuit_figures.node_pairs_figure(result, method, selected), "ci_node_pairs",
            name=f"circuit-node-{selected}")
    if node.kind == "head":
        pair = st.selectbox("Attention pattern on the clean prompt of pair", list(range(len(result.clean))),
                            format_func=lambda i: f"{i + 1}: {result.clean[i]}", key="ci_pair")
        found = ui.compute(f"Attention of head {node.name}", lambda report: wb.head_attention(
            model_name, str(result.clean[pair]), node.layer, node.head, report))
        if found is not None:
            tokens, pattern = found
            ui.plot(circuit_figures.attention_figure(tokens, pattern, f"Head {node.name} on pair {pair + 1}"),
                    "ci_attention", name=f"attention-{node.name}")
