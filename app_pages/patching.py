"""Patching page: activation patching vs AtP vs RelP on one prompt pair, and the faithfulness
scoreboard over IOI pairs. Widgets -> request -> service -> figures; nothing is computed here."""

import streamlit as st

import ui
from workbench.analyses.faithfulness import MAX_PAIRS, FaithfulnessRequest
from workbench.analyses.patching import HEADS, SITES, PatchingRequest
from workbench.figures import patching as figures

st.title("Patching: activation vs attribution vs relevance")
st.caption(
    "Metric m = (LD − LD_corr) / (LD_clean − LD_corr), LD = logit(answer) − logit(wrong). Activation patching "
    "writes one clean activation into the corrupted run (ground truth); AtP estimates it with one gradient; "
    "RelP (Jafari et al. 2025) uses LRP rules in the backward pass only. Press Streamlit's Stop (or change "
    "a widget) to cancel a running computation; only finished results are cached."
)
model_name = ui.selected_model()


def rule_toggles(prefix: str) -> dict:
    cols = st.columns(5)
    return {
        "ln_rule": cols[0].checkbox("LN-rule", True, key=f"{prefix}_ln"),
        "identity_rule": cols[1].checkbox("identity rule", True, key=f"{prefix}_id"),
        "half_rule": cols[2].checkbox("half rule (gated MLP)", True, key=f"{prefix}_half"),
        "ah_rule": cols[3].checkbox("AH-rule (attention)", False, key=f"{prefix}_ah"),
        "heads": cols[4].checkbox("per head", True, key=f"{prefix}_heads"),
    }


one_pair, scoreboard = st.tabs(["One prompt pair", "Faithfulness scoreboard"])

with one_pair:
    with st.form("patching_form"):
        clean = st.text_input(
            "Clean prompt", "When Mary and John went to the store, John gave a drink to", key="pt_clean"
        )
        corrupted = st.text_input(
            "Corrupted prompt (same number of tokens)",
            "When Mary and John went to the store, Mary gave a drink to", key="pt_corrupted",
        )
        left, right = st.columns(2)
        answer = left.text_input("Answer token (clean)", " Mary", key="pt_answer")
        wrong = right.text_input("Wrong-answer token", " John", key="pt_wrong")
        rules = rule_toggles("pt")
        if st.form_submit_button("Run patching", type="primary"):
            st.session_state["pt_request"] = (model_name, clean, corrupted, answer, wrong, rules)

    if "pt_request" in st.session_state:
        req_model, req_clean, req_corrupted, req_answer, req_wrong, req_rules = st.session_state["pt_request"]
        wb = ui.workbench()

        result = ui.compute(
            f"Patching on {req_model}",
            lambda report: wb.patching(
                req_model, PatchingRequest(req_clean, req_corrupted, req_answer, req_wrong, **req_rules), report
            ),
        )
        if result is not None:
            st.caption(
                f"Seconds: activation patching {result.seconds_act:.1f}, AtP {result.seconds_atp:.2f}, "
                f"RelP {result.seconds_relp:.2f} (first run; cached afterwards)."
            )
            for component in (*SITES, HEADS) if result.has_heads else SITES:
                st.plotly_chart(figures.method_heatmaps(result, component), key=f"pt_map_{component}")
    else:
        st.info("Enter a clean/corrupted pair and press **Run patching**.")

with scoreboard:
    with st.form("faithfulness_form"):
        cols = st.columns(3)
        n_pairs = cols[0].number_input("IOI pairs", 2, MAX_PAIRS, 20, key="pf_pairs")
        seed = cols[1].number_input("Seed", 0, 10_000, 0, key="pf_seed")
        top_k = cols[2].number_input("Top-k for overlap", 1, 1000, 20, key="pf_top_k")
        rules = rule_toggles("pf")
        if st.form_submit_button("Run scoreboard", type="primary"):
            st.session_state["pf_request"] = (model_name, int(n_pairs), int(seed), int(top_k), rules)

    if "pf_request" in st.session_state:
        req_model, req_pairs, req_seed, req_top_k, req_rules = st.session_state["pf_request"]
        wb = ui.workbench()

        result = ui.compute(
            f"Faithfulness over {req_pairs} IOI pairs on {req_model}",
            lambda report: wb.patching_faithfulness(
                req_model, FaithfulnessRequest(n_pairs=req_pairs, seed=req_seed, top_k=req_top_k, **req_rules), report
            ),
        )
        if result is not None:
            left, right = st.columns(2)
            left.plotly_chart(figures.correlation_table(result, "pearson"), key="pf_pearson")
            right.plotly_chart(figures.correlation_table(result, "spearman"), key="pf_spearman")
            st.plotly_chart(figures.correlation_table(result, "topk_overlap"), key="pf_topk")
            st.plotly_chart(figures.scatter_grid(result), key="pf_scatter")
    else:
        st.info("Each pair is activation-patched at every layer and position: expect minutes on a CPU.")
