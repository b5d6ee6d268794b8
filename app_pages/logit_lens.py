"""Logit lens page: prompt and target in, heatmap and per-layer curves out."""

import streamlit as st

import ui
from workbench.analyses.logit_lens import ANALYSIS, MAX_TOP_K, LogitLensRequest

ui.header("Logit lens", "Each residual-stream state decoded through the model's final norm and unembedding "
          "(nostalgebraist 2020). Row 'embed' is the input to block 0; row l is the output of block l; "
          "the last row is the model's own prediction.")
form = ui.RequestForm("ll", LogitLensRequest("The capital of France is", " Paris"))

with form.box("logit_lens_form", "Run logit lens"):
    st.text_area("Prompt", key=form.key("prompt"))
    left, right = st.columns([3, 1])
    left.text_input("Target token (optional, one token; mind the leading space)", key=form.key("target"))
    right.number_input("Top-k in hover", 1, MAX_TOP_K, key=form.key("top_k"))

if (result := form.run(ANALYSIS, "Enter a prompt and press **Run logit lens**.")) is not None:
    ui.chart(ANALYSIS, "heatmap", result, key="ll_heatmap")
    ui.chart(ANALYSIS, "layer_curves", result, key="ll_curves")
