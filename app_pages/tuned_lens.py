"""Tuned lens page: train translators in the background, then compare with the logit lens."""

import dataclasses

import streamlit as st

import ui
from workbench.analyses import linear_shortcut, shortcut_grid
from workbench.analyses.linear_shortcut import LinearShortcutRequest
from workbench.analyses.shortcut_grid import ShortcutGridRequest
from workbench.analyses.tuned_lens import ANALYSIS, LensComparisonRequest, TunedLensConfig
from workbench.export import FigureSource
from workbench.figures.tuned_lens import loss_curve

model_name = ui.header(
    "Tuned lens", "Belrose et al. (2023): an affine translator per layer, trained so each layer's decoded distribution "
    "matches the final one (KL). Trained on the Python Language Reference that ships with CPython; every fifth topic "
    "is held out for evaluation. Training runs in the background; stop it at any time and resume later.")
wb = ui.workbench()
UNDER_TRAINED_STEPS = 100  # below this a tuned lens is still close to the logit lens it starts from

st.subheader("Instant: the linear shortcut")
st.caption("Din et al. (2023), 'Jump to Conclusions': per layer, the affine map from that layer's state to the last "
           "layer's state that fits the corpus best, solved in closed form (no training loop: seconds). Compared with "
           "the logit lens in the same views as the tuned lens below.")
shortcut_form = ui.RequestForm("ls", LinearShortcutRequest("The capital of France is", " Paris"),
                               names={"fit_chunks": "fit", "eval_chunks": "eval", "chunk_tokens": "chunk"},
                               bounds={"fit_chunks": (8, 512), "eval_chunks": (1, 64), "chunk_tokens": (16, 512)})
with shortcut_form.box("ls_form", "Fit and compare"):
    st.text_area("Prompt", key=shortcut_form.key("prompt"), height=68)
    cols = st.columns([3, 1, 1])
    cols[0].text_input("Target token (optional, one token)", key=shortcut_form.key("target"))
    cols[1].number_input("Fitting chunks", 8, 512, step=8, key=shortcut_form.key("fit_chunks"))
    cols[2].number_input("Held-out chunks", 1, 64, key=shortcut_form.key("eval_chunks"))
live = st.empty()  # the prompt's trajectory shows as soon as the maps are fitted; held-out numbers follow


def show_partial(partial) -> None:
    with live.container():
        if partial.eval_tokens:
            st.caption(f"Held-out statistics so far: {partial.eval_tokens:d} tokens (more chunks are running).")
            ui.live_chart(linear_shortcut.ANALYSIS.figure("held_out", partial))
        else:
            st.caption("The maps are fitted; the held-out statistics are being computed.")
        ui.live_chart(linear_shortcut.ANALYSIS.figure("trajectory", partial))


shortcut = shortcut_form.run(linear_shortcut.ANALYSIS, "Press **Fit and compare** for the instant learned lens.",
                             on_partial=show_partial)
if shortcut is not None:
    live.empty()
    ui.chart(linear_shortcut.ANALYSIS, "held_out", shortcut, key="ls_held_out")
    ui.chart(linear_shortcut.ANALYSIS, "trajectory", shortcut, key="ls_trajectory")

st.subheader("Shortcuts between layers")
st.caption("Din et al. (2023): for a source layer l and a later target layer l', one affine map fitted in closed form "
           "replaces blocks l to l'-1; the model's own forward continues from l'. Each cell is the held-out KL to the "
           "model's output (and top-1 agreement), beside simply skipping those blocks. A stride picks the layers "
           "(0: about nine of them).")
grid_form = ui.RequestForm("sg", ShortcutGridRequest(),
                           names={"fit_chunks": "fit", "eval_chunks": "eval", "chunk_tokens": "chunk"},
                           bounds={"fit_chunks": (8, 512), "eval_chunks": (1, 16), "chunk_tokens": (16, 512),
                                   "stride": (0, 64)})
with grid_form.box("sg_form", "Fit and evaluate"):
    cols = st.columns(3)
    cols[0].number_input("Fitting chunks", 8, 512, step=8, key=grid_form.key("fit_chunks"))
    cols[1].number_input("Held-out chunks", 1, 16, key=grid_form.key("eval_chunks"))
    cols[2].number_input("Layer stride (0: automatic)", 0, 64, key=grid_form.key("stride"))
grid = grid_form.run(shortcut_grid.ANALYSIS, "Press **Fit and evaluate** for the grid of shortcuts between layers.")
if grid is not None:
    ui.chart(shortcut_grid.ANALYSIS, "kl", grid, key="sg_kl")
    ui.chart(shortcut_grid.ANALYSIS, "top1", grid, key="sg_top1")

st.subheader("Trained: the tuned lens")
config_form = ui.RequestForm("tl", TunedLensConfig(), names={"chunk_tokens": "chunk"}, state="config",
                             bounds={"chunk_tokens": (16, 512), "lr": (1e-5, 1e-1), "seed": (0, 10_000)})
compare_form = ui.RequestForm("tl", LensComparisonRequest("The capital of France is", " Paris"),
                              names={"eval_chunks": "eval"}, skip=("lens_step",))

with st.expander("Lens settings"):
    cols = st.columns(3)
    cols[0].number_input("Tokens per training chunk", 16, 512, step=16, key=config_form.key("chunk_tokens"))
    cols[1].number_input("Learning rate (Adam)", 1e-5, 1e-1, format="%.5f", key=config_form.key("lr"))
    cols[2].number_input("Seed", 0, 10_000, key=config_form.key("seed"))
config = ui.guarded(config_form.from_widgets)
if config is None:
    st.stop()

st.subheader("1. Train")
left, mid, right = st.columns([2, 1, 1])
steps = left.number_input("Train up to step", 1, 100_000, 200, step=50, key="tl_steps")
if mid.button("Start / resume", type="primary", key="tl_start"):
    ui.compute(f"Preparing {model_name}", lambda report: wb.start_tuned_lens_training(model_name, config, int(steps),
                                                                                      report))
if right.button("Stop", key="tl_stop"):
    ui.guarded(lambda: wb.stop_tuned_lens_training(model_name, config))


def show_status() -> None:
    status = ui.guarded(lambda: wb.tuned_lens_status(model_name, config))
    if status is None:
        return
    if status.state == "running":
        st.progress(status.step / max(1, status.target_steps),
                    text=f"Training: step {status.step:d} of {status.target_steps:d}")
    else:
        st.markdown(f"State: **{ui.escape(status.state)}**, {status.step:d} steps trained."
                    + (f" {ui.escape(status.message)}" if status.message else ""))
    if status.losses:
        ui.plot(loss_curve(status), "tl_loss", name="tuned_lens-loss")


with st.spinner(f"Loading {ui.escape(model_name)} and its lens checkpoint"):
    current = ui.guarded(lambda: wb.tuned_lens_status(model_name, config))
# While training runs, the status box refreshes itself every 2 s without rerunning the page.
st.fragment(show_status, run_every=2.0 if current is not None and current.state == "running" else None)()

st.subheader("2. Compare with the logit lens")
with compare_form.box("tl_compare", "Compare lenses"):
    st.text_area("Prompt", key=compare_form.key("prompt"))
    cols = st.columns([3, 1])
    cols[0].text_input("Target token (optional, one token)", key=compare_form.key("target"))
    cols[1].number_input("Held-out chunks", 1, 64, key=compare_form.key("eval_chunks"))

request = compare_form.submit(config=config)
if request is not None:
    config_form.share(request.config)
    # the service compares the lens as trained so far and fills in its step
    result = ui.compute(f"Comparing lenses on {model_name}", lambda report: wb.compare_lenses(
        model_name, request.prompt, request.target, request.config, request.eval_chunks, report))
    if result is not None:
        if result.lens_step < UNDER_TRAINED_STEPS:
            st.warning(f"This tuned lens has had only {result.lens_step:d} training steps, so it is still close to the "
                       "logit lens it starts from: its numbers say little yet. Train it further (a few hundred "
                       "steps) and compare again, or use the linear shortcut above, which needs no training.")
        ui.remember(result, FigureSource(ANALYSIS.name, model_name,
                                         dataclasses.replace(request, lens_step=result.lens_step)))
        ui.chart(ANALYSIS, "held_out", result, key="tl_held_out")
        ui.chart(ANALYSIS, "trajectory", result, key="tl_trajectory")
