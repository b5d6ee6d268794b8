"""Latent-language page: answer-language vs English probability per layer."""

import streamlit as st

import ui
from workbench.analyses.latent_language import TASKS, LatentLanguageRequest, languages
from workbench.export import spec_of
from workbench.figures import latent_language as figures

st.title("Latent language")
st.caption(
    "After Wendler et al. (2024), 'Do Llamas Work in English?'. Few-shot prompts whose answer is one token in "
    "the target language; per layer, the logit-lens probability of that answer and of the same word in the pivot "
    "language. Words that are not single, distinct tokens for this model are skipped and listed."
)
model_name = ui.selected_model()
names = languages()
codes = list(names)

with st.form("ll_lang_form"):
    cols = st.columns(4)
    ui.url_default("lat_task", TASKS[0], choices=TASKS)
    task = cols[0].selectbox("Task", TASKS, key="lat_task")
    for key, default in (("lat_target", "fr"), ("lat_source", "de"), ("lat_pivot", "en")):
        ui.url_default(key, default, choices=codes)
    target = cols[1].selectbox("Answer language", codes, format_func=names.get, key="lat_target")
    source = cols[2].selectbox("Source language (translation)", codes, format_func=names.get, key="lat_source")
    pivot = cols[3].selectbox("Pivot language", codes, format_func=names.get, key="lat_pivot")
    ui.url_default("lat_max", 40, bounds=(5, 70))
    max_prompts = st.slider("Prompts at most", 5, 70, key="lat_max")
    submitted = st.form_submit_button("Run latent-language view", type="primary")

if submitted or ui.opened_from_link("lat_request", ["lat_task"]):
    st.session_state["lat_request"] = (model_name, dict(
        task=task, target_lang=target, source_lang=source, pivot_lang=pivot, max_prompts=max_prompts))
    ui.share({"lat_task": task, "lat_target": target, "lat_source": source, "lat_pivot": pivot,
              "lat_max": max_prompts})

if "lat_request" in st.session_state:
    req_model, fields = st.session_state["lat_request"]
    wb = ui.workbench()

    request = ui.guarded(lambda: LatentLanguageRequest(**fields))
    result = request and ui.compute(f"Latent language on {req_model}",
                        lambda report: wb.latent_language(req_model, request, report))
    if result is not None:
        only_correct = st.checkbox("Only prompts the model answers correctly", key="lat_only_correct")
        figure = "probabilities_correct" if only_correct else "probabilities"
        ui.chart(figures.probabilities(result, only_correct), "lat_chart",
                 spec_of("latent_language", figure, req_model, request))
        with st.expander(f"{len(result.prompts)} prompts used, {len(result.skipped)} words skipped"):
            st.write("Skipped (not single distinct tokens):", ", ".join(result.skipped) or "none")
            st.code(result.prompts[0] if len(result.prompts) else "", language=None)
else:
    st.info("Choose a task and press **Run latent-language view**.")
