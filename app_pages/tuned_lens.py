"""Tuned lens page: train translators in the background, then compare with the logit lens."""

import streamlit as st

import ui
from workbench.analyses.tuned_lens import TunedLensConfig
from workbench.figures import tuned_lens as figures

st.title("Tuned lens")
st.caption(
    "Belrose et al. (2023): an affine translator per layer, trained so each layer's decoded distribution matches "
    "the final one (KL). Trained on the Python Language Reference that ships with CPython; every fifth topic is "
    "held out for evaluation. Training runs in the background; stop it at any time and resume later."
)
model_name = ui.selected_model()
wb = ui.workbench()

with st.expander("Lens settings"):
    cols = st.columns(3)
    chunk_tokens = cols[0].number_input("Tokens per training chunk", 16, 512, 64, step=16, key="tl_chunk")
    lr = cols[1].number_input("Learning rate (Adam)", 1e-5, 1e-1, 1e-3, format="%.5f", key="tl_lr")
    seed = cols[2].number_input("Seed", 0, 10_000, 0, key="tl_seed")
config = ui.guarded(lambda: TunedLensConfig(chunk_tokens=int(chunk_tokens), lr=float(lr), seed=int(seed)))
if config is None:
    st.stop()

st.subheader("1. Train")
left, mid, right = st.columns([2, 1, 1])
steps = left.number_input("Train up to step", 1, 100_000, 200, step=50, key="tl_steps")
if mid.button("Start / resume", type="primary", key="tl_start"):
    with ui.progress(f"Preparing {model_name}") as report:
        ui.guarded(lambda: wb.start_tuned_lens_training(model_name, config, int(steps), report))
if right.button("Stop", key="tl_stop"):
    ui.guarded(lambda: wb.stop_tuned_lens_training(model_name, config))


def show_status() -> None:
    status = ui.guarded(lambda: wb.tuned_lens_status(model_name, config))
    if status is None:
        return
    if status.state == "running":
        st.progress(status.step / max(1, status.target_steps),
                    text=f"Training: step {status.step} of {status.target_steps}")
    else:
        st.write(f"State: **{status.state}**, {status.step} steps trained." + (
            f" {status.message}" if status.message else ""))
    if status.losses:
        ui.chart(figures.loss_curve(status), "tl_loss")


with st.spinner(f"Loading {model_name} and its lens checkpoint"):
    current = ui.guarded(lambda: wb.tuned_lens_status(model_name, config))
# While training runs, the status box refreshes itself every 2 s without rerunning the page.
st.fragment(show_status, run_every=2.0 if current is not None and current.state == "running" else None)()

st.subheader("2. Compare with the logit lens")
with st.form("tl_compare"):
    prompt = st.text_area("Prompt", value="The capital of France is", key="tl_prompt")
    cols = st.columns([3, 1])
    target = cols[0].text_input("Target token (optional, one token)", value=" Paris", key="tl_target")
    eval_chunks = cols[1].number_input("Held-out chunks", 1, 64, 4, key="tl_eval")
    submitted = st.form_submit_button("Compare lenses", type="primary")

if submitted:
    st.session_state["tl_request"] = (model_name, prompt, target, int(eval_chunks), config)

if "tl_request" in st.session_state:
    req_model, req_prompt, req_target, req_eval, req_config = st.session_state["tl_request"]

    result = ui.compute(
        f"Comparing lenses on {req_model}",
        lambda report: wb.compare_lenses(req_model, req_prompt, req_target, req_config, req_eval, report),
    )
    if result is not None:
        ui.chart(figures.held_out(result), "tl_held_out")
        ui.chart(figures.trajectory(result), "tl_trajectory")
