"""Depth use page: how much each block contributes and what skipping it changes."""

import streamlit as st

import ui
from workbench.analyses.depth_use import ANALYSIS, DepthUseRequest

ui.header("Depth use", "After Csordás et al. (2025), 'Do Language Models Use Their Depth Efficiently?'. "
          "Contributions are differences of residual states around each sublayer; skipping a block replaces its "
          "output by its input.")
form = ui.RequestForm(
    "du", DepthUseRequest("The Eiffel Tower is located in the city of Paris, which is the capital of France"),
    names={"include_first_token": "first"})

with form.box("depth_form", "Run depth analysis"):
    st.text_area("Prompt", key=form.key("prompt"))
    st.checkbox("Include the first token in the averages (it is usually an attention sink)",
                key=form.key("include_first_token"))

if (result := form.run(ANALYSIS, "Enter a prompt and press **Run depth analysis**.")) is not None:
    ui.chart(ANALYSIS, "contributions", result, key="du_contrib")
    ui.chart(ANALYSIS, "skip_effects", result, key="du_skip")
