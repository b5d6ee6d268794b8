"""Depth use page: how much each block contributes and what skipping it changes."""

import streamlit as st

import ui
from workbench.analyses.depth_use import DepthUseRequest
from workbench.export import spec_of
from workbench.figures import depth_use as figures

st.title("Depth use")
st.caption(
    "After Csordás et al. (2025), 'Do Language Models Use Their Depth Efficiently?'. Contributions are "
    "differences of residual states around each sublayer; skipping a block replaces its output by its input."
)
model_name = ui.selected_model()

with st.form("depth_form"):
    ui.url_default("du_prompt", "The Eiffel Tower is located in the city of Paris, which is the capital of France")
    prompt = st.text_area("Prompt", key="du_prompt")
    ui.url_default("du_first", False)
    first = st.checkbox("Include the first token in the averages (it is usually an attention sink)",
                        key="du_first")
    submitted = st.form_submit_button("Run depth analysis", type="primary")

if submitted or ui.opened_from_link("du_request", ["du_prompt"]):
    st.session_state["du_request"] = (model_name, DepthUseRequest(prompt=prompt, include_first_token=first))
    ui.share({"du_prompt": prompt, "du_first": first})

if "du_request" in st.session_state:
    req_model, request = st.session_state["du_request"]
    wb = ui.workbench()

    result = ui.compute(f"Depth use on {req_model}", lambda report: wb.depth_use(req_model, request, report))
    if result is not None:
        ui.chart(figures.contributions(result), "du_contrib", spec_of("depth_use", "contributions", req_model, request))
        ui.chart(figures.skip_effects(result), "du_skip", spec_of("depth_use", "skip_effects", req_model, request))
else:
    st.info("Enter a prompt and press **Run depth analysis**.")
