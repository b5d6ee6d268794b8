"""Logit lens page: prompt and target in, heatmap and per-layer curves out."""

import streamlit as st

import ui
from workbench.analyses.logit_lens import MAX_TOP_K, LogitLensRequest
from workbench.figures import logit_lens as figures

st.title("Logit lens")
st.caption(
    "Each residual-stream state decoded through the model's final norm and unembedding "
    "(nostalgebraist 2020). Row 'embed' is the input to block 0; row l is the output of block l; "
    "the last row is the model's own prediction."
)
model_name = ui.selected_model()

with st.form("logit_lens_form"):
    prompt = st.text_area("Prompt", value="The capital of France is", key="ll_prompt")
    left, right = st.columns([3, 1])
    target = left.text_input(
        "Target token (optional, one token; mind the leading space)", value=" Paris", key="ll_target"
    )
    top_k = right.number_input("Top-k in hover", 1, MAX_TOP_K, 5, key="ll_top_k")
    submitted = st.form_submit_button("Run logit lens", type="primary")

if submitted:
    st.session_state["ll_request"] = (model_name, prompt, target, int(top_k))

if "ll_request" in st.session_state:
    req_model, req_prompt, req_target, req_top_k = st.session_state["ll_request"]
    wb = ui.workbench()

    result = ui.compute(
        f"Logit lens on {req_model}",
        lambda report: wb.logit_lens(
            req_model, LogitLensRequest(prompt=req_prompt, target=req_target, top_k=req_top_k), report
        ),
    )
    if result is not None:
        st.plotly_chart(figures.heatmap(result), key="ll_heatmap")
        st.plotly_chart(figures.layer_curves(result), key="ll_curves")
else:
    st.info("Enter a prompt and press **Run logit lens**.")
