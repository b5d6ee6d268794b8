"""Patchscope page: a source state read back by the model in a target prompt, slot by slot."""

import streamlit as st

import ui
from workbench.analyses.patchscope import (
    ANALYSIS,
    DEFAULT_GRID,
    MAX_NEW_TOKENS,
    MAX_SLOT,
    MAX_TOP_K,
    PatchscopeRequest,
)

SLOT_CHOICES = list(range(0, 129))  # the request refuses a slot the model lacks, naming its range

ui.header("Patchscope", "Ghandeharioun et al. (2024), 'Patchscopes'. The source prompt runs once; its residual state "
          "at the source position in slot l (0 = embeddings, l = output of block l - 1) is written into the target "
          "prompt at the placeholder position in slot l', and the model continues greedily. With the identity "
          "prompt the model repeats what it reads in the state. Colour: probability of the first decoded token.")
form = ui.RequestForm(
    "ps", PatchscopeRequest("The capital of France is"),
    names={"source_position": "pos", "source_slots": "src", "target_slots": "tgt", "target_prompt": "target",
           "placeholder": "at", "n_tokens": "n"},
    bounds={"source_slots": (0, MAX_SLOT), "target_slots": (0, MAX_SLOT), "n_tokens": (1, MAX_NEW_TOKENS),
            "top_k": (1, MAX_TOP_K)})

with form.box("patchscope_form", "Run Patchscope"):
    st.text_area("Source prompt", key=form.key("prompt"), height=68)
    st.text_input("Target prompt (the placeholder token receives the state)", key=form.key("target_prompt"))
    cols = st.columns(4)
    cols[0].number_input("Source position (negative: from the end)", -4096, 4095, key=form.key("source_position"))
    cols[1].number_input("Placeholder position in the target (negative: from the end)", -4096, 4095,
                         key=form.key("placeholder"))
    cols[2].number_input("Tokens to decode", 1, MAX_NEW_TOKENS, key=form.key("n_tokens"))
    cols[3].number_input("Top-k in hover", 1, MAX_TOP_K, key=form.key("top_k"))
    left, right = st.columns(2)
    left.multiselect(f"Source slots (empty: {DEFAULT_GRID:d} evenly spaced)", SLOT_CHOICES,
                     key=form.key("source_slots"))
    right.multiselect(f"Target slots (empty: {DEFAULT_GRID:d} evenly spaced)", SLOT_CHOICES,
                      key=form.key("target_slots"))

if (result := form.run(ANALYSIS, "Enter a source prompt and press **Run Patchscope**.")) is not None:
    source_token = str(result.source_tokens[result.source_position])
    target_token = str(result.target_tokens[result.placeholder])
    own = ", ".join(f"{str(t)!r} {p:.3f}" for t, p in zip(result.own_top_tokens, result.own_top_probs, strict=True))
    st.markdown(ui.escape(f"Source token {source_token!r} at position {result.source_position:d}; placeholder "
                          f"{target_token!r} at target position {result.placeholder:d}. The model's own next tokens "
                          f"after the source position: {own}."))
    ui.chart(ANALYSIS, "grid", result, key="ps_grid")
    ui.chart(ANALYSIS, "diagonal", result, key="ps_diagonal")
