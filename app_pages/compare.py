"""Compare page: the same analyses on two models side by side, and every per-layer summary
overlaid on normalised depth l/L (``workbench.summaries``). Widgets -> requests -> service ->
figures; nothing is computed here."""

import streamlit as st

import ui
from workbench import concept_datasets
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.depth_use import DepthUseRequest
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.analyses.neuron_classes import NeuronClassRequest
from workbench.analyses.patching import PatchingRequest
from workbench.export import OVERLAY, FigureSource, FigureSpec, build_figure, spec_of
from workbench.models import catalog
from workbench.registry import entry

ANALYSES = {  # registry name -> (label, the figure shown side by side)
    "logit_lens": ("Logit lens", "heatmap"),
    "attention_sinks": ("Attention sinks", "layer_token_heatmap"),
    "neuron_classes": ("Neuron classes (from weights)", "class_fractions"),
    "depth_use": ("Depth use (skips every block: slower)", "skip_effects"),
    "patching": ("Patching, IOI pair (slow on CPU)", "resid"),
    "concept_depth": ("Concept depth, probes (slow on CPU)", "curves"),
}
DEFAULT_ANALYSES = ["logit_lens", "attention_sinks", "neuron_classes"]
IOI = ("When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
OTHER = ui.OTHER

st.title("Compare models")
st.caption(
    "The same requests on two models. Side by side: each analysis's main figure. Overlay: every per-layer "
    "summary on normalised depth l/L (0 = embedding, 1 = the last block's output; a block's quantity sits at "
    "the depth of the residual state it writes), so models of different depths line up."
)
model_a = ui.selected_model()
others = [n for n in catalog.catalog_names() if n != model_a] + catalog.catalog_names() + [OTHER]
choices = list(dict.fromkeys(others))

with st.form("compare_form"):
    cols = st.columns([2, 3])
    ui.url_default("cmp_b", choices[0], choices=None)
    if st.session_state["cmp_b"] not in choices:  # a directory or hub id from a shared link
        st.session_state.setdefault("cmp_b_custom", st.session_state["cmp_b"])
        st.session_state["cmp_b"] = OTHER
    if st.session_state.get("_cmp_a") not in (None, model_a) and st.session_state["cmp_b"] == model_a:
        st.session_state["cmp_b"] = choices[0]  # the sidebar switched to the second model: offer another
    st.session_state["_cmp_a"] = model_a
    model_b_choice = cols[0].selectbox("Second model", choices, key="cmp_b",
                                       format_func=lambda n: catalog.CATALOG[n].label if n in catalog.CATALOG else n)
    model_b_custom = cols[0].text_input("Second model directory or hub id (for Other)", key="cmp_b_custom")
    ui.url_default("cmp_analyses", DEFAULT_ANALYSES, choices=list(ANALYSES))
    analyses = cols[1].multiselect("Analyses", list(ANALYSES), key="cmp_analyses",
                                   format_func=lambda n: ANALYSES[n][0])
    ui.url_default("cmp_prompt", "The capital of France is")
    prompt = st.text_area("Prompt (logit lens, attention sinks, depth use)", key="cmp_prompt")
    cols = st.columns(3)
    ui.url_default("cmp_target", " Paris")
    target = cols[0].text_input("Logit-lens target token (one token on both models)", key="cmp_target")
    ui.url_default("cmp_task", "factual", choices=list(concept_datasets.TASKS))
    task = cols[1].selectbox("Concept-depth task", concept_datasets.TASKS, key="cmp_task")
    ui.url_default("cmp_limit", 100, bounds=(20, 400))
    limit = cols[2].number_input("Concept-depth texts", 20, 400, step=20, key="cmp_limit")
    submitted = st.form_submit_button("Compare", type="primary")

if submitted or ui.opened_from_link("cmp_request", ["cmp_b", "cmp_analyses"]):
    model_b = model_b_custom.strip() if model_b_choice == OTHER else model_b_choice
    st.session_state["cmp_request"] = (model_a, model_b, tuple(analyses), prompt, target, task, int(limit))
    ui.share({"cmp_b": model_b, "cmp_analyses": list(analyses), "cmp_prompt": prompt, "cmp_target": target,
              "cmp_task": task, "cmp_limit": int(limit)})


def make_request(analysis: str, prompt: str, target: str, task: str, limit: int):
    """The request each analysis gets from the form (the same for both models)."""
    if analysis == "logit_lens":
        return LogitLensRequest(prompt, target)
    if analysis == "attention_sinks":
        return SinkProbeRequest(prompt=prompt)
    if analysis == "neuron_classes":
        return NeuronClassRequest()
    if analysis == "depth_use":
        return DepthUseRequest(prompt)
    if analysis == "patching":
        return PatchingRequest(*IOI, heads=False)
    return entry("concept_depth").request({"task": task, "limit": limit})


def run_both(analysis: str, models: tuple[str, str], request) -> list:
    """Run ``analysis`` on both models side by side; returns the sources that succeeded."""
    label, figure = ANALYSES[analysis]
    st.subheader(label)
    done = []
    for column, model in zip(st.columns(2), models, strict=True):
        with column:
            st.caption(f"**{model}**")
            result = ui.compute(f"{label} on {model}",
                                lambda report, model=model: entry(analysis).run(wb, model, request, report))
            if result is not None:
                ui.chart(entry(analysis).figure(figure, result), f"cmp_{analysis}_{len(done)}_{model}",
                         spec_of(analysis, figure, model, request), name=f"{analysis}-{figure}")
                done.append(FigureSource(analysis, model, request))
    return done


if "cmp_request" in st.session_state:
    req_a, req_b, req_analyses, req_prompt, req_target, req_task, req_limit = st.session_state["cmp_request"]
    wb = ui.workbench()
    if not req_b:
        st.error("Name the second model: pick it in the list, or choose Other and give a directory or hub id.")
    elif not req_analyses:
        st.error("Pick at least one analysis to compare.")
    else:
        overlay = st.container()
        sources = []
        for analysis in req_analyses:
            request = ui.guarded(lambda analysis=analysis: make_request(analysis, req_prompt, req_target, req_task,
                                                                        req_limit))
            if request is not None:
                sources += run_both(analysis, (req_a, req_b), request)
        with overlay:
            if sources:
                spec = FigureSpec(OVERLAY, tuple(sources), f"{req_a} vs {req_b} on normalised depth")
                figure = ui.guarded(lambda: build_figure(wb, spec))
                if figure is not None:
                    ui.chart(figure, "cmp_overlay", spec, name="compare-overlay")
else:
    st.info("Pick a second model and the analyses, then press **Compare**.")
