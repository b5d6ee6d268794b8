"""Latent-language page: per layer, the lens probability of the answer's word in each candidate language,
as its first token and as the whole word (Wendler et al. 2024; Zhong et al. 2025)."""

import streamlit as st

import ui
from workbench.analyses.latent_language import ANALYSIS, TASKS, LatentLanguageRequest, language_means, languages

ui.header("Latent language", "After Wendler et al. (2024), 'Do Llamas Work in English?', and Zhong et al. (2025), "
          "'Beyond English-Centric LLMs': few-shot prompts whose answer is a word in the answer language; per layer, "
          "the logit-lens probability of that word and of the same word in the pivot language and every other "
          "candidate language. Two quantities, shown separately: the first-token probability, and the whole-answer "
          "probability (the word's tokens appended one by one, the same layer's lens read at each of them, the "
          "conditionals multiplied). Concepts whose words do not fit the tokenisation filter are skipped and listed.")
names = languages()
form = ui.RequestForm(
    "lat", LatentLanguageRequest(),
    names={"target_lang": "target", "source_lang": "source", "pivot_lang": "pivot", "max_prompts": "max",
           "multi_token": "multi"},
    bounds={"max_prompts": (5, 70)}, choices={"candidates": list(names)})

with form.box("ll_lang_form", "Run latent-language view"):
    cols = st.columns(4)
    cols[0].selectbox("Task", TASKS, key=form.key("task"))
    for col, field, label in ((cols[1], "target_lang", "Answer language"),
                              (cols[2], "source_lang", "Source language (translation)"),
                              (cols[3], "pivot_lang", "Pivot language")):
        col.selectbox(label, list(names), format_func=names.get, key=form.key(field))
    st.multiselect("Other candidate latent languages", list(names), format_func=names.get,
                   key=form.key("candidates"))
    cols = st.columns([1, 2])
    cols[0].checkbox("Allow answers of several tokens", key=form.key("multi_token"),
                     help="Off: only concepts that are one distinct token in every chosen language (Wendler et al.'s "
                          "design; both quantities are then equal). On: words of any length.")
    cols[1].slider("Prompts at most", 5, 70, key=form.key("max_prompts"))

if (result := form.run(ANALYSIS, "Choose a task and press **Run latent-language view**.")) is not None:
    correct = float(result.final_correct.mean()) if len(result.final_correct) else 0.0
    if correct < 0.25:  # e.g. SmolLM2 on translation: 0% right, most words skipped; the lens lines stay flat at 0
        st.warning(f"{ui.escape(ui.selected_model())} answers only {correct:.0%} of these "
                   f"{len(result.prompts):d} prompts correctly ({len(result.skipped):d} concepts were skipped by the "
                   "tokenisation filter), so its lens probabilities stay near zero and say little about a latent "
                   "language. Gemma 3 270M base (pick it in the sidebar) is the bundled model this view works "
                   "on; the repetition task is also easier for small models.")
    only_correct = st.checkbox("Only prompts the model answers correctly (its top token is the answer's first token)",
                               key="lat_only_correct")
    suffix = "_correct" if only_correct else ""
    st.markdown("**First-token probability**: the lens probability of the word's first token at the prompt's last "
                "position. Where two languages' words begin with the same token, that prompt is left out of both "
                "languages' means (the legend counts the prompts used).")
    ui.chart(ANALYSIS, f"first_token{suffix}", result, key="lat_chart")
    st.markdown("**Whole-answer probability**: the product, over the word's tokens, of the same layer's lens "
                "probability of each token given the prompt and the tokens before it. Equal to the first-token "
                "probability for a one-token word; at the last layer, the model's own probability of the whole word.")
    ui.chart(ANALYSIS, f"whole_answer{suffix}", result, key="lat_chart_whole")
    depth = [("1/4", len(result.layer_labels) // 4), ("1/2", len(result.layer_labels) // 2),
             ("3/4", 3 * len(result.layer_labels) // 4), ("last", len(result.layer_labels) - 1)]
    rows = []
    for quantity, label in (("first", "first token"), ("whole", "whole answer")):
        means = language_means(result, quantity, only_correct)
        for index, code in enumerate(result.langs):
            row = {"probability": label, "language": names.get(str(code), str(code)),
                   "prompts": int(means.counted[index])}
            row.update({f"{name} depth ({result.layer_labels[slot]})": f"{float(means.mean[index, slot]):.3g}"
                        for name, slot in depth})  # three significant digits: tiny values stay readable
            rows.append(row)
    st.caption("Mean probability per language at a quarter, half, three quarters and all of the depth.")
    st.dataframe(rows, hide_index=True)
    with st.expander(f"{len(result.prompts):d} prompts used, {len(result.skipped):d} concepts skipped"):
        st.text("Skipped (target words): " + (", ".join(result.skipped) or "none"))
        if len(result.prompts):
            st.text("Tokens per word: " + "; ".join(
                f"{names.get(str(code), str(code))} {result.n_tokens[:, i].mean():.1f}"
                for i, code in enumerate(result.langs)))
        st.code(result.prompts[0] if len(result.prompts) else "", language=None)
