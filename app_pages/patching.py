"""Patching page: activation patching vs AtP vs RelP on one prompt pair, and the faithfulness
scoreboard over IOI pairs. Widgets -> request -> service -> figures; nothing is computed here."""

import streamlit as st

import ui
from workbench.analyses import patching, patching_faithfulness
from workbench.analyses.patching import HEADS, IOI_PAIR, SITES, PatchingRequest
from workbench.analyses.patching_faithfulness import MAX_PAIRS, FaithfulnessRequest

ui.header("Patching: activation vs attribution vs relevance",
          "Metric m = (LD − LD_corr) / (LD_clean − LD_corr), LD = logit(answer) − logit(wrong). Activation patching "
          "writes one clean activation into the corrupted run (ground truth); AtP estimates it with one gradient; "
          "RelP (Jafari et al. 2025) uses LRP rules in the backward pass only. Press Streamlit's Stop (or change "
          "a widget) to cancel a running computation; only finished results are cached.")
RULES = {"ln_rule": "LN-rule", "identity_rule": "identity rule", "half_rule": "half rule (gated MLP)",
         "ah_rule": "AH-rule (attention)", "heads": "per head"}
RULE_NAMES = {"ln_rule": "ln", "identity_rule": "id", "half_rule": "half", "ah_rule": "ah"}
pair_form = ui.RequestForm("pt", PatchingRequest(*IOI_PAIR), names=RULE_NAMES)
board_form = ui.RequestForm("pf", FaithfulnessRequest(top_k=20), names={"n_pairs": "pairs", **RULE_NAMES},
                            bounds={"n_pairs": (2, MAX_PAIRS), "seed": (0, 10_000), "top_k": (1, 1000)})


def rule_toggles(form: ui.RequestForm) -> None:
    """The LRP rule toggles (and per-head patching) of ``form``'s request."""
    for col, (field, label) in zip(st.columns(len(RULES)), RULES.items(), strict=True):
        col.checkbox(label, key=form.key(field))


one_pair, scoreboard = st.tabs(["One prompt pair", "Faithfulness scoreboard"])

with one_pair:
    with pair_form.box("patching_form", "Run patching"):
        st.text_input("Clean prompt", key=pair_form.key("clean"))
        st.text_input("Corrupted prompt (same number of tokens)", key=pair_form.key("corrupted"))
        left, right = st.columns(2)
        left.text_input("Answer token (clean)", key=pair_form.key("answer"))
        right.text_input("Wrong-answer token", key=pair_form.key("wrong"))
        rule_toggles(pair_form)
    live = st.empty()  # AtP and RelP show here within seconds; activation patching then fills in block by block

    def show_partial(partial) -> None:
        with live.container():
            st.caption("AtP and RelP are done; activation patching is filling in (blank cells have not run yet).")
            for component in (*SITES, HEADS) if partial.has_heads else SITES:
                ui.live_chart(patching.ANALYSIS.figure(component, partial))

    result = pair_form.run(patching.ANALYSIS, "Enter a clean/corrupted pair and press **Run patching**.",
                           on_partial=show_partial)
    if result is not None:
        live.empty()
        st.caption(
            f"Seconds: activation patching {result.seconds_act:.1f}, AtP {result.seconds_atp:.2f}, "
            f"RelP {result.seconds_relp:.2f} (first run; cached afterwards)."
        )
        for component in (*SITES, HEADS) if result.has_heads else SITES:
            ui.chart(patching.ANALYSIS, component, result, key=f"pt_map_{component}")

with scoreboard:
    with board_form.box("faithfulness_form", "Run scoreboard"):
        cols = st.columns(3)
        cols[0].number_input("IOI pairs", 2, MAX_PAIRS, key=board_form.key("n_pairs"))
        cols[1].number_input("Seed", 0, 10_000, key=board_form.key("seed"))
        cols[2].number_input("Top-k for overlap", 1, 1000, key=board_form.key("top_k"))
        rule_toggles(board_form)
    live_board = st.empty()

    def show_board(partial) -> None:
        with live_board.container():
            st.caption(f"Scoreboard of the first {partial.n_pairs:d} pairs (updates after every pair).")
            ui.live_chart(patching_faithfulness.ANALYSIS.figure("pearson", partial))

    board = board_form.run(patching_faithfulness.ANALYSIS,
                           "Each pair is activation-patched at every layer and position: about a minute per pair "
                           "on two CPU cores for the default model.", on_partial=show_board)
    if board is not None:
        live_board.empty()
        left, right = st.columns(2)
        for measure, place in (("pearson", left), ("spearman", right), ("topk_overlap", st.container())):
            with place:
                ui.chart(patching_faithfulness.ANALYSIS, measure, board, key=f"pf_{measure}")
        ui.chart(patching_faithfulness.ANALYSIS, "scatter", board, key="pf_scatter")
