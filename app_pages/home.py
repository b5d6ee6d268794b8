"""Home page: what the workbench is and which model is selected."""

import streamlit as st

import ui
from workbench.models import catalog

st.title("LayerLens workbench")
st.markdown(
    "Look inside transformer language models layer by layer. Pick a model in the sidebar, "
    "then open an analysis page. Results are cached, so reopening a view is instant."
)
name = ui.selected_model()
entry = ui.guarded(lambda: catalog.resolve(name))
if entry is not None:
    st.subheader(entry.label)
    if entry.note:
        st.info(entry.note)
st.markdown(
    "Every chart can be exported for a paper (SVG, PNG, PDF, or a bundle with its data and a manifest "
    "that regenerates it), every page's address can be shared, and **Compare models** puts two models "
    "side by side on normalised depth. `python -m workbench` runs the same analyses without the UI."
)
st.markdown(
    "**Pages**\n\n"
    "- **Logit lens**: what each layer would predict if the model stopped there "
    "(nostalgebraist 2020), as a layers × positions heatmap, with per-layer KL to the "
    "final distribution and the rank of a target token."
)
