"""Latent-language page: answer-language vs English probability per layer."""

import streamlit as st

import ui
from workbench.analyses.latent_language import TASKS, LatentLanguageRequest, languages
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
    task = cols[0].selectbox("Task", TASKS, key="lat_task")
    target = cols[1].selectbox("Answer language", codes, index=codes.index("fr"), format_func=names.get,
                               key="lat_target")
    source = cols[2].selectbox("Source language (translation)", codes, index=codes.index("de"),
                               format_func=names.get, key="lat_source")
    pivot = cols[3].selectbox("Pivot language", codes, index=codes.index("en"), format_func=names.get,
                              key="lat_pivot")
    max_prompts = st.slider("Prompts at most", 5, 70, 40, key="lat_max")
    submitted = st.form_submit_button("Run latent-language view", type="primary")

if submitted:
    st.session_state["lat_request"] = (model_name, dict(
        task=task, target_lang=target, source_lang=source, pivot_lang=pivot, max_prompts=max_prompts))

if "lat_request" in st.session_state:
    req_model, fields = st.session_state["lat_request"]
    wb = ui.workbench()

    result = ui.compute(
        f"Latent language on {req_model}",
        lambda report: wb.latent_language(req_model, LatentLanguageRequest(**fields), report),
    )
    if result is not None:
        only_correct = st.checkbox("Only prompts the model answers correctly", key="lat_only_correct")
        st.plotly_chart(figures.probabilities(result, only_correct), key="lat_chart")
        with st.expander(f"{len(result.prompts)} prompts used, {len(result.skipped)} words skipped"):
            st.write("Skipped (not single distinct tokens):", ", ".join(result.skipped) or "none")
            st.code(result.prompts[0] if len(result.prompts) else "", language=None)
else:
    st.info("Choose a task and press **Run latent-language view**.")
