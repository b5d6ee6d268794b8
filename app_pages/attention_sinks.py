"""Attention sinks page: one prompt's sink probe, and sink levels over a prompt set."""

import streamlit as st

import ui
from workbench.analyses import attention_sinks, sink_levels
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.sink_levels import SinkLevelsRequest, default_prompts
from workbench.figures.attention_sinks import first_label, sink_rows

ui.header("Attention sinks", "Sink score of a key = mean attention it receives from later queries (Gu et al. 2025); "
          "a head sinks on it when the score exceeds eps. Hidden-state view (Wong et al.): inside the BOS sink window "
          "(from the block where the first token's norm jumps most to where it drops most) a token is a sink where "
          "|cos(h_t, h_first)| exceeds the threshold. Gemma's tokenizer prepends `<bos>`; SmolLM2's adds none, so its "
          "first real token plays the BOS role.")
THRESHOLDS = (  # field, label, bounds, step: shared by the single probe and the prompt set
    ("eps", "eps (sink score)", (0.01, 0.99), 0.05),
    ("cos_threshold", "|cos| threshold", (0.01, 0.99), 0.05),
    ("primary_margin", "primary-like: lifetime ≥ L −", (0, 100), 1),
    ("min_secondary_lifetime", "secondary: lifetime >", (0, 100), 1),
)
LINK = {"names": {"cos_threshold": "cos", "primary_margin": "pm", "min_secondary_lifetime": "ms"},
        "bounds": {field: bounds for field, _, bounds, _ in THRESHOLDS}}
probe_form = ui.RequestForm("sk", SinkProbeRequest(prompt="The capital of France is Paris, and the capital of Italy "
                                                          "is Rome."), **LINK)
levels_form = ui.RequestForm("lv", SinkLevelsRequest(prompts=default_prompts()), lines=("prompts",), **LINK)


def thresholds_widgets(form: ui.RequestForm) -> None:
    """The four thresholds of ``form``'s request."""
    for col, (field, label, (low, high), step) in zip(st.columns(4), THRESHOLDS, strict=True):
        col.number_input(label, low, high, step=step, key=form.key(field))


probe_tab, batch_tab = st.tabs(["One prompt", "Sink levels over a prompt set"])

with probe_tab:
    with probe_form.box("sinks_form", "Run sink probe"):
        st.text_area("Prompt", key=probe_form.key("prompt"))
        thresholds_widgets(probe_form)
    result = probe_form.run(attention_sinks.ANALYSIS, "Enter a prompt and press **Run sink probe**.")
    if result is not None:
        first = "the tokenizer's BOS" if result.first_is_bos else "the first real token (no BOS added)"
        drop = f"drops at block {result.drop_block})." if result.drop_block >= 0 else "never drops after)."
        st.markdown(
            f"Position 0 is **{ui.escape(result.tokens[0])}**, {ui.escape(first)}. "
            f"**{result.first_head_fraction:.0%}** of (layer, head) have sink score > {result.eps:g} on it. "
            f"BOS sink window: after block {result.window_start - 1:d} to after block {result.window_end - 1:d} "
            f"(norm jumps at block {result.jump_block:d}, {ui.escape(drop)}"
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
            ui.chart(attention_sinks.ANALYSIS, figure, result, key=key)
        if rows := sink_rows(result):
            st.subheader("Tokens that become sinks in the window")
            st.dataframe(rows, key="sk_table")
        else:
            st.info("No token besides position 0 reaches the cosine threshold inside the window.")

with batch_tab:
    with levels_form.box("levels_form", "Run over the prompt set"):
        st.text_area("Prompts, one per line", height=240, key=levels_form.key("prompts"))
        thresholds_widgets(levels_form)
    live_levels = st.empty()  # the onset histogram of the prompts probed so far, while the rest run

    def show_levels(partial) -> None:
        with live_levels.container():
            st.caption(f"First {len(partial.prompt_secondary_count):d} prompts probed; the others are running.")
            ui.live_chart(sink_levels.ANALYSIS.figure("onset_histogram", partial))

    levels = levels_form.run(sink_levels.ANALYSIS, "Edit the prompt set if you like and press **Run over the "
                             "prompt set** (results are cached).", on_partial=show_levels)
    live_levels.empty()
    if levels is not None:
        st.markdown(
            f"{len(levels.prompt_secondary_count):d} prompts; mean fraction of (layer, head) sinking on "
            f"{ui.escape(first_label(levels))}: **{levels.prompt_first_fraction.mean():.0%}**; "
            f"secondary sinks found: **{levels.count('secondary'):d}** "
            f"in {levels.share_with_secondary:.0%} of prompts "
            f"(other sink tokens: {levels.count('primary-like'):d} primary-like, {levels.count('noise'):d} noise)."
        )
        ui.chart(sink_levels.ANALYSIS, "onset_histogram", levels, key="lv_onsets")
        if len(levels.sink_onset):
            ui.chart(sink_levels.ANALYSIS, "lifetime_scatter", levels, key="lv_scatter")
