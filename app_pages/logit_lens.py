"""Logit lens page: prompt and target in, heatmap and per-layer curves out."""

import streamlit as st

import ui
from workbench.analyses.logit_lens import MAX_TOP_K, LogitLensRequest
from workbench.export import spec_of
from workbench.figures import logit_lens as figures

st.title("Logit lens")
st.caption(
    "Each residual-stream state decoded through the model's final norm and unembedding "
    "(nostalgebraist 2020). Row 'embed' is the input to block 0; row l is the output of block l; "
    "the last row is the model's own prediction."
)
model_name = ui.selected_model()

with st.form("logit_lens_form"):
    ui.url_default("ll_prompt", "The capital of France is")
    prompt = st.text_area("Prompt", key="ll_prompt")
    left, right = st.columns([3, 1])
    ui.url_default("ll_target", " Paris")
    target = left.text_input("Target token (optional, one token; mind the leading space)", key="ll_target")
    ui.url_default("ll_top_k", 5, bounds=(1, MAX_TOP_K))
    top_k = right.number_input("Top-k in hover", 1, MAX_TOP_K, key="ll_top_k")
    submitted = st.form_submit_button("Run logit lens", type="primary")

if submitted or ui.opened_from_link("ll_request", ["ll_prompt"]):
    st.session_state["ll_request"] = (model_name, prompt, target, int(top_k))
    ui.share({"ll_prompt": prompt, "ll_target": target, "ll_top_k": int(top_k)})

if "ll_request" in st.session_state:
    req_model, req_prompt, req_target, req_top_k = st.session_state["ll_request"]
    wb = ui.workbench()
    request = ui.guarded(lambda: LogitLensRequest(prompt=req_prompt, target=req_target, top_k=req_top_k))
    result = request and ui.compute(f"Logit lens on {req_model}",
                                    lambda report: wb.logit_lens(req_model, request, report))
    if result is not None:
        ui.chart(figures.heatmap(result), "ll_heatmap", spec_of("logit_lens", "heatmap", req_model, request))
        ui.chart(figures.layer_curves(result), "ll_curves", spec_of("logit_lens", "layer_curves", req_model, request))
else:
    st.info("Enter a prompt and press **Run logit lens**.")
