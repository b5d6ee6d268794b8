"""Latent-language page: answer-language vs English probability per layer."""

import streamlit as st

import ui
from workbench.analyses.latent_language import ANALYSIS, TASKS, LatentLanguageRequest, languages

ui.header("Latent language", "After Wendler et al. (2024), 'Do Llamas Work in English?'. Few-shot prompts whose "
          "answer is one token in the target language; per layer, the logit-lens probability of that answer and of "
          "the same word in the pivot language. Words that are not single, distinct tokens for this model are "
          "skipped and listed.")
names = languages()
form = ui.RequestForm(
    "lat", LatentLanguageRequest(),
    names={"target_lang": "target", "source_lang": "source", "pivot_lang": "pivot", "max_prompts": "max"},
    bounds={"max_prompts": (5, 70)})

with form.box("ll_lang_form", "Run latent-language view"):
    cols = st.columns(4)
    cols[0].selectbox("Task", TASKS, key=form.key("task"))
    for col, field, label in ((cols[1], "target_lang", "Answer language"),
                              (cols[2], "source_lang", "Source language (translation)"),
                              (cols[3], "pivot_lang", "Pivot language")):
        col.selectbox(label, list(names), format_func=names.get, key=form.key(field))
    st.slider("Prompts at most", 5, 70, key=form.key("max_prompts"))

if (result := form.run(ANALYSIS, "Choose a task and press **Run latent-language view**.")) is not None:
    correct = float(result.final_correct.mean()) if len(result.final_correct) else 0.0
    if correct < 0.25:  # e.g. SmolLM2 on translation: 0% right, most words skipped; the lens lines stay flat at 0
        st.warning(f"{ui.escape(ui.selected_model())} answers only {correct:.0%} of these "
                   f"{len(result.prompts):d} prompts correctly ({len(result.skipped):d} words were skipped: not single "
                   "tokens for it), so its lens probabilities stay near zero and say little about a latent "
                   "language. Gemma 3 270M base (pick it in the sidebar) is the bundled model this view works "
                   "on; the repetition task is also easier for small models.")
    only_correct = st.checkbox("Only prompts the model answers correctly", key="lat_only_correct")
    ui.chart(ANALYSIS, "probabilities_correct" if only_correct else "probabilities", result, key="lat_chart")
    with st.expander(f"{len(result.prompts):d} prompts used, {len(result.skipped):d} words skipped"):
        st.text("Skipped (not single distinct tokens): " + (", ".join(result.skipped) or "none"))
        st.code(result.prompts[0] if len(result.prompts) else "", language=None)
