"""Future lens page: how well one hidden state predicts the tokens after the next (linear variants)."""

import streamlit as st

import ui
from workbench.analyses.future_lens import ANALYSIS, FutureLensRequest

ui.header(
    "Future lens", "Pal et al. (2023), 'Future Lens: Anticipating Subsequent Tokens from a Single Hidden State', "
    "linear variants. From the state of one layer at one position, predict the token one, two and three places "
    "ahead: (a) through an affine map to the final layer's state at the position that predicts that token (closed "
    "form, ridge toward the logit lens), decoded by the model's own unembedding; (b) a readout trained directly on "
    "the true token (Adam, starting from (a)). Fitted on the Python Language Reference that ships with CPython, "
    "scored on held-out topics. Dashed lines: copying the model's next-token prediction, and the model's own "
    "accuracy with the full context.")
form = ui.RequestForm(
    "fl", FutureLensRequest("The capital of France is"),
    names={"fit_chunks": "fit", "eval_chunks": "eval", "chunk_tokens": "chunk", "weight_decay": "wd"},
    bounds={"fit_chunks": (1, 128), "eval_chunks": (1, 64), "chunk_tokens": (16, 512), "epochs": (0, 20),
            "top_k": (1, 20)},
    skip=("corpus", "seed"))

with form.box("fl_form", "Fit and score"):
    st.text_area("Prompt (its last token is the one looked at)", key=form.key("prompt"), height=68)
    cols = st.columns(4)
    cols[0].number_input("Fitting chunks", 1, 128, key=form.key("fit_chunks"))
    cols[1].number_input("Held-out chunks", 1, 64, key=form.key("eval_chunks"))
    cols[2].number_input("Tokens per chunk", 16, 512, step=16, key=form.key("chunk_tokens"))
    cols[3].number_input("Top tokens shown", 1, 20, key=form.key("top_k"))
    with st.expander("Fitting options"):
        cols = st.columns(4)
        cols[0].number_input("Ridge toward the logit lens (a)", 0.0, 1e6, format="%.4f", key=form.key("ridge"))
        cols[1].number_input("Epochs of the direct readout (b)", 0, 20, key=form.key("epochs"))
        cols[2].number_input("Learning rate (b)", 1e-6, 1.0, format="%.6f", key=form.key("lr"))
        cols[3].number_input("Weight decay toward (a)", 0.0, 1e3, format="%.4f", key=form.key("weight_decay"))
live = st.empty()  # every scored slot shows while the next one is fitted


def show_partial(partial) -> None:
    with live.container():
        st.caption(f"Slots scored so far: {partial.slots_done:d} of {len(partial.layer_labels):d}.")
        ui.live_chart(ANALYSIS.figure("accuracy", partial))


result = form.run(ANALYSIS, "Press **Fit and score** to fit the future lens (about a minute or more on a CPU).",
                  on_partial=show_partial)
if result is not None:
    live.empty()
    st.caption(f"Fitted on {result.fit_tokens:d} positions, scored on {result.eval_tokens:d} held-out positions; "
               f"the direct readout trains over {result.candidates:d} candidate tokens.")
    ui.chart(ANALYSIS, "accuracy", result, key="fl_accuracy")
    ui.chart(ANALYSIS, "nll", result, key="fl_nll")
    ui.chart(ANALYSIS, "predictions", result, key="fl_predictions")
