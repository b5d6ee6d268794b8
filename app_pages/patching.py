"""Patching page: activation patching vs AtP vs RelP on one prompt pair, and the faithfulness
scoreboard over IOI pairs. Widgets -> request -> service -> figures; nothing is computed here."""

import streamlit as st

import ui
from workbench.analyses.patching import HEADS, SITES, PatchingRequest
from workbench.analyses.patching_faithfulness import MAX_PAIRS, FaithfulnessRequest
from workbench.export import spec_of
from workbench.figures import patching as figures

st.title("Patching: activation vs attribution vs relevance")
st.caption(
    "Metric m = (LD − LD_corr) / (LD_clean − LD_corr), LD = logit(answer) − logit(wrong). Activation patching "
    "writes one clean activation into the corrupted run (ground truth); AtP estimates it with one gradient; "
    "RelP (Jafari et al. 2025) uses LRP rules in the backward pass only. Press Streamlit's Stop (or change "
    "a widget) to cancel a running computation; only finished results are cached."
)
model_name = ui.selected_model()


RULE_KEYS = (("ln", "ln_rule"), ("id", "identity_rule"), ("half", "half_rule"), ("ah", "ah_rule"),
             ("heads", "heads"))
RULE_LABELS = {"ln_rule": ("LN-rule", True), "identity_rule": ("identity rule", True),
               "half_rule": ("half rule (gated MLP)", True), "ah_rule": ("AH-rule (attention)", False),
               "heads": ("per head", True)}


def rule_toggles(prefix: str) -> dict:
    """The LRP rule toggles (and per-head patching), seeded from a shared link's URL."""
    cols = st.columns(5)
    rules = {}
    for col, (short, name) in zip(cols, RULE_KEYS, strict=True):
        label, default = RULE_LABELS[name]
        ui.url_default(f"{prefix}_{short}", default)
        rules[name] = col.checkbox(label, key=f"{prefix}_{short}")
    return rules


one_pair, scoreboard = st.tabs(["One prompt pair", "Faithfulness scoreboard"])

with one_pair:
    with st.form("patching_form"):
        for key, default in (("pt_clean", "When Mary and John went to the store, John gave a drink to"),
                             ("pt_corrupted", "When Mary and John went to the store, Mary gave a drink to"),
                             ("pt_answer", " Mary"), ("pt_wrong", " John")):
            ui.url_default(key, default)
        clean = st.text_input("Clean prompt", key="pt_clean")
        corrupted = st.text_input("Corrupted prompt (same number of tokens)", key="pt_corrupted")
        left, right = st.columns(2)
        answer = left.text_input("Answer token (clean)", key="pt_answer")
        wrong = right.text_input("Wrong-answer token", key="pt_wrong")
        rules = rule_toggles("pt")
        submitted = st.form_submit_button("Run patching", type="primary")
    if submitted or ui.opened_from_link("pt_request", ["pt_clean", "pt_corrupted"]):
        st.session_state["pt_request"] = (model_name, clean, corrupted, answer, wrong, rules)
        ui.share({"pt_clean": clean, "pt_corrupted": corrupted, "pt_answer": answer, "pt_wrong": wrong,
                  **{f"pt_{short}": rules[name] for short, name in RULE_KEYS}})

    if "pt_request" in st.session_state:
        req_model, req_clean, req_corrupted, req_answer, req_wrong, req_rules = st.session_state["pt_request"]
        wb = ui.workbench()

        request = ui.guarded(lambda: PatchingRequest(req_clean, req_corrupted, req_answer, req_wrong, **req_rules))
        result = request and ui.compute(f"Patching on {req_model}",
                                        lambda report: wb.patching(req_model, request, report))
        if result is not None:
            st.caption(
                f"Seconds: activation patching {result.seconds_act:.1f}, AtP {result.seconds_atp:.2f}, "
                f"RelP {result.seconds_relp:.2f} (first run; cached afterwards)."
            )
            for component in (*SITES, HEADS) if result.has_heads else SITES:
                ui.chart(figures.method_heatmaps(result, component), f"pt_map_{component}",
                         spec_of("patching", component, req_model, request))
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

        board_request = ui.guarded(
            lambda: FaithfulnessRequest(n_pairs=req_pairs, seed=req_seed, top_k=req_top_k, **req_rules))
        result = board_request and ui.compute(f"Faithfulness over {req_pairs} IOI pairs on {req_model}",
                            lambda report: wb.patching_faithfulness(req_model, board_request, report))
        if result is not None:
            left, right = st.columns(2)
            for measure, place in (("pearson", left), ("spearman", right), ("topk_overlap", st.container())):
                with place:
                    ui.chart(figures.correlation_table(result, measure), f"pf_{measure}",
                             spec_of("patching_faithfulness", measure, req_model, board_request))
            ui.chart(figures.scatter_grid(result), "pf_scatter",
                     spec_of("patching_faithfulness", "scatter", req_model, board_request))
    else:
        st.info("Each pair is activation-patched at every layer and position: expect minutes on a CPU.")
