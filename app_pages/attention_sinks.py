"""Attention sinks page: one prompt's sink probe, and sink levels over a prompt set."""

import streamlit as st

import ui
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.sink_levels import SinkLevelsRequest, default_prompts
from workbench.export import spec_of
from workbench.figures import attention_sinks as figures

st.title("Attention sinks")
st.caption(
    "Sink score of a key = mean attention it receives from later queries (Gu et al. 2025); a head sinks "
    "on it when the score exceeds eps. Hidden-state view (Wong et al.): inside the BOS sink window "
    "(from the block where the first token's norm jumps most to where it drops most) a token is a sink "
    "where |cos(h_t, h_first)| exceeds the threshold. Gemma's tokenizer prepends <bos>; SmolLM2's adds "
    "none, so its first real token plays the BOS role."
)
model_name = ui.selected_model()


def thresholds_widgets(prefix: str) -> dict:
    """The four thresholds, seeded from a shared link's URL where it has them."""
    cols = st.columns(4)
    for name, default, bounds in (("eps", 0.3, (0.01, 0.99)), ("cos", 0.9, (0.01, 0.99)), ("pm", 15, (0, 100)),
                                  ("ms", 4, (0, 100))):
        ui.url_default(f"{prefix}_{name}", default, bounds=bounds)
    return {
        "eps": cols[0].number_input("eps (sink score)", 0.01, 0.99, step=0.05, key=f"{prefix}_eps"),
        "cos_threshold": cols[1].number_input("|cos| threshold", 0.01, 0.99, step=0.05, key=f"{prefix}_cos"),
        "primary_margin": int(cols[2].number_input("primary-like: lifetime ≥ L −", 0, 100, key=f"{prefix}_pm")),
        "min_secondary_lifetime": int(cols[3].number_input("secondary: lifetime >", 0, 100, key=f"{prefix}_ms")),
    }


probe_tab, batch_tab = st.tabs(["One prompt", "Sink levels over a prompt set"])

with probe_tab:
    with st.form("sinks_form"):
        ui.url_default("sk_prompt", "The capital of France is Paris, and the capital of Italy is Rome.")
        prompt = st.text_area("Prompt", key="sk_prompt")
        thresholds = thresholds_widgets("sk")
        submitted = st.form_submit_button("Run sink probe", type="primary")
    if submitted or ui.opened_from_link("sk_request", ["sk_prompt"]):
        st.session_state["sk_request"] = (model_name, prompt, thresholds)
        ui.share({"sk_prompt": prompt, "sk_eps": thresholds["eps"], "sk_cos": thresholds["cos_threshold"],
                  "sk_pm": thresholds["primary_margin"], "sk_ms": thresholds["min_secondary_lifetime"]})
    if "sk_request" in st.session_state:
        req_model, req_prompt, req_thresholds = st.session_state["sk_request"]
        wb = ui.workbench()

        request = ui.guarded(lambda: SinkProbeRequest(prompt=req_prompt, **req_thresholds))
        result = request and ui.compute(f"Sink probe on {req_model}",
                                        lambda report: wb.attention_sinks(req_model, request, report))
        if result is not None:
            first = "the tokenizer's BOS" if result.first_is_bos else "the first real token (no BOS added)"
            st.markdown(
                f"Position 0 is **{result.tokens[0]}**, {first}. "
                f"**{result.first_head_fraction:.0%}** of (layer, head) have sink score > {result.eps:g} on it. "
                f"BOS sink window: after block {result.window_start - 1} to after block {result.window_end - 1} "
                f"(norm jumps at block {result.jump_block}, "
                + (f"drops at block {result.drop_block})." if result.drop_block >= 0 else "never drops after).")
            )
            st.markdown(
                f"Anisotropy baseline: inside the window, two ordinary tokens have median |cos| "
                f"**{result.peer_cos_in_window:.2f}** with each other. When this is near the "
                f"{result.cos_threshold:g} threshold, the cosine criterion reflects a direction every token "
                "shares rather than sinks."
            )
            for figure, key in (("layer_token_heatmap", "sk_layer_token"), ("layer_head_heatmap", "sk_layer_head"),
                                ("first_norm_curve", "sk_first_norm"), ("cosine_heatmap", "sk_cosine"),
                                ("norm_heatmap", "sk_norms")):
                ui.chart(getattr(figures, figure)(result), key, spec_of("attention_sinks", figure, req_model, request))
            rows = figures.sink_rows(result)
            if rows:
                st.subheader("Tokens that become sinks in the window")
                st.dataframe(rows, key="sk_table")
            else:
                st.info("No token besides position 0 reaches the cosine threshold inside the window.")
    else:
        st.info("Enter a prompt and press **Run sink probe**.")

with batch_tab:
    with st.form("levels_form"):
        text = st.text_area("Prompts, one per line", value="\n".join(default_prompts()), height=240, key="lv_prompts")
        levels_thresholds = thresholds_widgets("lv")
        batch_submitted = st.form_submit_button("Run over the prompt set", type="primary")
    if batch_submitted:
        lines = tuple(line for line in text.splitlines() if line.strip())
        st.session_state["lv_request"] = (model_name, lines, levels_thresholds)
    if "lv_request" in st.session_state:
        req_model, req_prompts, req_thresholds = st.session_state["lv_request"]
        wb = ui.workbench()

        levels_request = ui.guarded(lambda: SinkLevelsRequest(prompts=req_prompts, **req_thresholds))
        levels = levels_request and ui.compute(f"Sink levels on {req_model}",
                                               lambda report: wb.sink_levels(req_model, levels_request, report))
        if levels is not None:
            st.markdown(
                f"{len(levels.prompt_secondary_count)} prompts; mean fraction of (layer, head) sinking on "
                f"{figures.first_label(levels)}: **{levels.prompt_first_fraction.mean():.0%}**; "
                f"secondary sinks found: **{levels.count('secondary')}** "
                f"in {levels.share_with_secondary:.0%} of prompts "
                f"(other sink tokens: {levels.count('primary-like')} primary-like, {levels.count('noise')} noise)."
            )
            ui.chart(figures.onset_histogram(levels), "lv_onsets",
                     spec_of("sink_levels", "onset_histogram", req_model, levels_request))
            if len(levels.sink_onset):
                ui.chart(figures.lifetime_scatter(levels), "lv_scatter",
                         spec_of("sink_levels", "lifetime_scatter", req_model, levels_request))
    else:
        st.info("Edit the prompt set if you like and press **Run over the prompt set** (results are cached).")
