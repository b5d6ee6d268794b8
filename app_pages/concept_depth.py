"""Concept-depth page: per-layer linear probes of labelled tasks, depth shift under noise, two models."""

import pandas as pd
import streamlit as st

import ui
from workbench import concept_datasets
from workbench.analyses.concept_depth import MAX_NOISE_TOKENS, ConceptDepthRequest, depth_shift
from workbench.errors import BadRequest
from workbench.figures import concept_depth as figures
from workbench.models import catalog

NONE, OTHER = "none", "other: directory or hub id"
SITE_LABELS = {"mlp_input": "MLP input (output of the pre-MLP / post-attention norm)",
               "block_output": "block output (residual stream)"}

st.title("Concept depth")
st.caption(
    "After Jin et al. (2024), 'Exploring Concept Depth'. For every block, the last token's representation of each "
    "labelled text trains an L2 logistic-regression probe (standardised features, fixed seeded stratified split); "
    "accuracy, F1 and ROC-AUC are measured on the held-out texts. The concept depth is the first block whose "
    "accuracy reaches the chosen fraction of the best block's. Depth is drawn as l/L so models of different depth "
    "share one axis."
)
st.info(f"Bundled tasks (factual: city/country truth; emotional: sentiment with negations; inferential: two-step "
        f"comparisons and arithmetic): {concept_datasets.PROVENANCE} Or upload your own CSV with columns text,label "
        f"(two classes, {concept_datasets.CSV_MIN_ROWS} to {concept_datasets.CSV_MAX_ROWS} rows, texts up to "
        f"{concept_datasets.CSV_MAX_CHARS} characters).")
model_name = ui.selected_model()

with st.form("cd_form"):
    compare_choices = [NONE, *catalog.catalog_names(), OTHER]
    for key, default, options in (("cd_tasks", list(concept_datasets.TASKS), concept_datasets.TASKS),
                                  ("cd_site", "mlp_input", list(SITE_LABELS)), ("cd_compare", NONE, compare_choices)):
        ui.url_default(key, default, choices=options)
    ui.url_default("cd_limit", 400, bounds=(20, concept_datasets.CSV_MAX_ROWS))
    ui.url_default("cd_fraction", 0.9, bounds=(0.5, 1.0))
    ui.url_default("cd_noise", 0, bounds=(0, MAX_NOISE_TOKENS))
    ui.url_default("cd_compare_custom", "")
    cols = st.columns([2, 2, 1])
    tasks = cols[0].multiselect("Bundled tasks", concept_datasets.TASKS, key="cd_tasks")
    upload = cols[1].file_uploader("Your dataset (CSV: text,label)", type=["csv"], key="cd_csv")
    limit = cols[2].number_input("Texts per task at most", 20, concept_datasets.CSV_MAX_ROWS, step=20,
                                 key="cd_limit", help="A balanced, seeded subset; fewer texts run faster.")
    cols = st.columns(4)
    site = cols[0].radio("Representation", list(SITE_LABELS), format_func=SITE_LABELS.get, key="cd_site")
    fraction = cols[1].slider("Depth threshold (fraction of the best accuracy)", 0.5, 1.0, step=0.01,
                              key="cd_fraction")
    noise = cols[2].number_input("Noise tokens to prepend (0: none)", 0, MAX_NOISE_TOKENS, key="cd_noise",
                                 help="Seeded random vocabulary tokens; the page then also shows the depth shift.")
    compare = cols[3].selectbox("Compare with model", compare_choices, key="cd_compare")
    compare_custom = cols[3].text_input("Other model (directory or hub id)", key="cd_compare_custom")
    submitted = st.form_submit_button("Run probes", type="primary")


def _datasets(task_names, csv_file, cap):
    sets = [concept_datasets.builtin(task) for task in task_names]
    if csv_file is not None:
        sets.append(concept_datasets.parse_csv(csv_file.getvalue(), name=csv_file.name.rsplit(".", 1)[0]))
    if not sets:
        raise BadRequest("Pick at least one bundled task or upload a CSV.")
    return [d.subset(int(cap)) for d in sets]


if submitted or ui.opened_from_link("cd_request", ["cd_tasks"]):
    ui.share({"cd_tasks": list(tasks), "cd_limit": int(limit), "cd_site": site, "cd_fraction": float(fraction),
              "cd_noise": int(noise), "cd_compare": compare, "cd_compare_custom": compare_custom})
    datasets = ui.guarded(lambda: _datasets(tasks, upload, limit))
    other = compare_custom.strip() if compare == OTHER else (None if compare == NONE else compare)
    if datasets is not None:
        requests = [ConceptDepthRequest(d.name, d.texts, d.labels, site=site, noise_tokens=n, fraction=fraction)
                    for d in datasets for n in sorted({0, int(noise)})]
        st.session_state["cd_request"] = ([m for m in (model_name, other) if m], requests)

if "cd_request" in st.session_state:
    models, requests = st.session_state["cd_request"]
    wb = ui.workbench()

    def run():
        results = {}
        for model in models:
            for index, request in enumerate(requests):
                label = f"{request.task}{f' + {request.noise_tokens} noise' if request.noise_tokens else ''}"
                with ui.progress(f"Probing {label} on {model} ({index + 1} of {len(requests)})") as report:
                    results[(model, index)] = wb.concept_depth(model, request, report)
        return results

    results = ui.guarded(run)
    if results is not None:
        main = [results[(models[0], i)] for i in range(len(requests))]
        ui.chart(figures.curves(main, f"Concept depth: {main[0].model_name}"), "cd_curves")
        rows = []
        for (model, index), result in results.items():
            clean = next(results[(model, j)] for j, r in enumerate(requests)
                         if r.task == requests[index].task and r.noise_tokens == 0)
            shift = depth_shift(clean, result)
            rows.append({"model": result.model_name, "task": result.task, "noise tokens": result.noise_tokens,
                         "concept depth (block)": result.depth_layer, "depth l/L": round(result.depth, 3),
                         "best block": result.best_layer, "best accuracy": round(float(result.accuracy.max()), 3),
                         "majority baseline": round(result.chance, 3), "test texts": result.n_test,
                         "shift vs clean (blocks)": shift[0] if result.noise_tokens else None})
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="cd_table")
        if len(models) > 1:
            clean_results = [r for (_, i), r in results.items() if requests[i].noise_tokens == 0]
            ui.chart(figures.curves(clean_results, f"{models[0]} vs {models[1]} on normalised depth"),
                     "cd_compare_chart")
else:
    st.info("Pick tasks (or upload a CSV) and press **Run probes**. Representations are cached, so changing "
            "only the threshold re-runs the probes, not the model.")
