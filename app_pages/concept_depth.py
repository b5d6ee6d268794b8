"""Concept-depth page: per-layer linear probes of labelled tasks, depth shift under noise, two models."""

from dataclasses import dataclass

import pandas as pd
import streamlit as st

import ui
from workbench import concept_datasets
from workbench.analyses.concept_depth import ANALYSIS, MAX_NOISE_TOKENS, ConceptDepthRequest, depth_shift
from workbench.errors import BadRequest
from workbench.figures.concept_depth import curves
from workbench.models import catalog

NONE, OTHER = "none", "other: directory or hub id"
SITE_LABELS = {"mlp_input": "MLP input (output of the pre-MLP / post-attention norm)",
               "block_output": "block output (residual stream)"}
COMPARE_CHOICES = [NONE, *catalog.catalog_names(), OTHER]


@dataclass(frozen=True)
class Probes:
    """The form as a shared link holds it: the bundled tasks and how to probe them (an uploaded
    CSV stays out of links). Each task becomes a ``ConceptDepthRequest``, with noise a second one."""

    tasks: tuple[str, ...] = concept_datasets.TASKS
    limit: int = 200  # about 6 s per task for the default model on two cores; up to CSV_MAX_ROWS
    site: str = "mlp_input"
    fraction: float = 0.9
    noise: int = 0
    compare: str = NONE
    compare_custom: str = ""

    @property
    def other_model(self) -> str:
        """The model to compare with ("" for none)."""
        if self.compare == OTHER:
            return self.compare_custom.strip()
        return "" if self.compare == NONE else self.compare

    def requests(self, upload) -> list[ConceptDepthRequest]:
        sets = [concept_datasets.builtin(task) for task in self.tasks]
        if upload is not None:
            sets.append(concept_datasets.parse_csv(upload.getvalue(), name=upload.name.rsplit(".", 1)[0]))
        if not sets:
            raise BadRequest("Pick at least one bundled task or upload a CSV.")
        return [ConceptDepthRequest(d.name, d.texts, d.labels, site=self.site, noise_tokens=n, fraction=self.fraction)
                for d in (d.subset(self.limit) for d in sets) for n in sorted({0, self.noise})]


model_name = ui.header(
    "Concept depth", "After Jin et al. (2024), 'Exploring Concept Depth'. For every block, the last token's "
    "representation of each labelled text trains an L2 logistic-regression probe (standardised features, fixed seeded "
    "stratified split); accuracy, F1 and ROC-AUC are measured on the held-out texts. The concept depth is the first "
    "block whose accuracy reaches the chosen fraction of the best block's. Depth is drawn as l/L so models of "
    "different depth share one axis.")
st.info(f"Bundled tasks (factual: city/country truth; emotional: sentiment with negations; inferential: two-step "
        f"comparisons and arithmetic): {ui.escape(concept_datasets.PROVENANCE)} Or upload your own CSV with columns "
        f"text,label (two classes, {concept_datasets.CSV_MIN_ROWS:d} to {concept_datasets.CSV_MAX_ROWS:d} rows, texts "
        f"up to {concept_datasets.CSV_MAX_CHARS:d} characters, a file of at most "
        f"{concept_datasets.CSV_MAX_BYTES / 2**20:.1f} MB).")
form = ui.RequestForm(
    "cd", Probes(), choices={"tasks": concept_datasets.TASKS, "site": SITE_LABELS, "compare": COMPARE_CHOICES},
    bounds={"limit": (20, concept_datasets.CSV_MAX_ROWS), "fraction": (0.5, 1.0), "noise": (0, MAX_NOISE_TOKENS)})

with form.box("cd_form", "Run probes"):
    cols = st.columns([2, 2, 1])
    cols[0].multiselect("Bundled tasks", concept_datasets.TASKS, key=form.key("tasks"))
    upload = cols[1].file_uploader("Your dataset (CSV: text,label)", type=["csv"], key="cd_csv",
                                   max_upload_size=concept_datasets.CSV_MAX_MB)
    cols[2].number_input("Texts per task at most", 20, concept_datasets.CSV_MAX_ROWS, step=20, key=form.key("limit"),
                         help="A balanced, seeded subset; fewer texts run faster.")
    cols = st.columns(4)
    cols[0].radio("Representation", list(SITE_LABELS), format_func=SITE_LABELS.get, key=form.key("site"))
    cols[1].slider("Depth threshold (fraction of the best accuracy)", 0.5, 1.0, step=0.01, key=form.key("fraction"))
    cols[2].number_input("Noise tokens to prepend (0: none)", 0, MAX_NOISE_TOKENS, key=form.key("noise"),
                         help="Seeded random vocabulary tokens; the page then also shows the depth shift.")
    cols[3].selectbox("Compare with model", COMPARE_CHOICES, key=form.key("compare"))
    cols[3].text_input("Other model (directory or hub id)", key=form.key("compare_custom"))

probes = form.submit()
if form.fresh:  # the probes' requests are built once, when asked for: a later upload does not change them
    st.session_state["cd_requests"] = None if probes is None else ui.guarded(lambda: probes.requests(upload))
requests = st.session_state.get("cd_requests") if probes is not None else None

if not requests:
    st.info("Pick tasks (or upload a CSV) and press **Run probes**. Representations are cached, so changing "
            "only the threshold re-runs the probes, not the model.")
else:
    results = {}  # model -> its results, one per request, for each model whose every probe succeeded
    live = st.empty()  # the curves grow task by task while the probes run
    for model in [model_name, probes.other_model] if probes.other_model else [model_name]:
        runs = []
        for index, request in enumerate(requests):
            runs.append(ui.run(ANALYSIS, request, model, label=f"Probing {request.task}"
                               f"{f' + {request.noise_tokens} noise' if request.noise_tokens else ''} on {model} "
                               f"({index + 1} of {len(requests)})"))
            done = [r for r in runs if r is not None]
            if model == model_name and done and index + 1 < len(requests):
                with live.container():
                    st.caption(f"{len(done):d} of {len(requests):d} probes done; the others are running.")
                    ui.live_chart(curves(done, f"Concept depth: {done[0].model_name}"))
        if None not in runs:
            results[model] = runs
    live.empty()
    if model_name in results:
        ui.plot(curves(results[model_name], f"Concept depth: {results[model_name][0].model_name}"), "cd_curves",
                name="concept_depth-curves")
    rows = []
    for runs in results.values():
        for request, result in zip(requests, runs, strict=True):
            clean = next(r for q, r in zip(requests, runs, strict=True)
                         if q.task == request.task and q.noise_tokens == 0)
            rows.append({"model": result.model_name, "task": result.task, "noise tokens": result.noise_tokens,
                         "concept depth (block)": result.depth_layer, "depth l/L": round(result.depth, 3),
                         "best block": result.best_layer, "best accuracy": round(float(result.accuracy.max()), 3),
                         "majority baseline": round(result.chance, 3), "test texts": result.n_test,
                         "shift vs clean (blocks)": depth_shift(clean, result)[0] if result.noise_tokens else None})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="cd_table")
    if len(results) > 1:
        models = list(results)
        clean_results = [r for runs in results.values() for q, r in zip(requests, runs, strict=True)
                         if q.noise_tokens == 0]
        ui.plot(curves(clean_results, f"{models[0]} vs {models[1]} on normalised depth"), "cd_compare_chart",
                name="concept_depth-compare")
