"""Compare page: the same analyses on two models side by side, and every per-layer summary
overlaid on normalised depth l/L (``workbench.summaries``). Every analysis of ``ANALYSES`` with a
``compare_request`` is offered: its title and note label it, its ``compare_figure`` is drawn for
each model. Widgets -> requests -> service -> figures; nothing is computed here."""

from dataclasses import dataclass

import streamlit as st

import ui
from workbench import concept_datasets
from workbench.analyses import ANALYSES, Analysis, CompareInputs
from workbench.export import OVERLAY, FigureSpec, build_figure
from workbench.models import catalog

COMPARABLE = {analysis.name: analysis for analysis in ANALYSES if analysis.compare_request is not None}
DEFAULT_ANALYSES = ("logit_lens", "attention_sinks", "neuron_classes")


@dataclass(frozen=True)
class Comparison(CompareInputs):
    """The form as a link holds it: what every analysis is asked, the second model, the analyses."""

    b: str = ""
    analyses: tuple[str, ...] = DEFAULT_ANALYSES


def label(analysis: Analysis) -> str:
    return f"{analysis.title} ({analysis.compare_note})" if analysis.compare_note else analysis.title


model_a = ui.header(
    "Compare models", "The same requests on two models. Side by side: each analysis's main figure. Overlay: every "
    "per-layer summary on normalised depth l/L (0 = embedding, 1 = the last block's output; a block's quantity sits at "
    "the depth of the residual state it writes), so models of different depths line up.")
choices = list(dict.fromkeys([n for n in catalog.catalog_names() if n != model_a] + catalog.catalog_names()
                             + [ui.OTHER]))
form = ui.RequestForm("cmp", Comparison(b=choices[0]), bounds={"limit": (20, 400)},
                      choices={"task": concept_datasets.TASKS, "analyses": COMPARABLE})
if st.session_state["cmp_b"] not in choices:  # a directory or hub id from a shared link
    st.session_state.setdefault("cmp_b_custom", st.session_state["cmp_b"])
    st.session_state["cmp_b"] = ui.OTHER
if st.session_state.get("_cmp_a") not in (None, model_a) and st.session_state["cmp_b"] == model_a:
    st.session_state["cmp_b"] = choices[0]  # the sidebar switched to the second model: offer another
st.session_state["_cmp_a"] = model_a

with form.box("compare_form", "Compare"):
    cols = st.columns([2, 3])
    b_choice = cols[0].selectbox("Second model", choices, key=form.key("b"), format_func=ui.model_label)
    b_custom = cols[0].text_input("Second model directory or hub id (for Other)", key="cmp_b_custom")
    cols[1].multiselect("Analyses", list(COMPARABLE), key=form.key("analyses"),
                        format_func=lambda name: label(COMPARABLE[name]))
    st.text_area("Prompt (logit lens, attention sinks, depth use)", key=form.key("prompt"))
    cols = st.columns(3)
    cols[0].text_input("Logit-lens target token (one token on both models)", key=form.key("target"))
    cols[1].selectbox("Concept-depth task", concept_datasets.TASKS, key=form.key("task"))
    cols[2].number_input("Concept-depth texts", 20, 400, step=20, key=form.key("limit"))
comparison = form.submit(b=b_custom.strip() if b_choice == ui.OTHER else b_choice)


def side_by_side(analysis: Analysis, models: tuple[str, str], request) -> list:
    """``analysis`` on both models, its compare figure side by side; returns the runs that succeeded."""
    st.subheader(ui.escape(label(analysis)))
    done = []
    for index, (column, model) in enumerate(zip(st.columns(2), models, strict=True)):
        with column:
            st.caption(f"**{ui.escape(model)}**")
            result = ui.run(analysis, request, model)
            if result is not None:
                ui.chart(analysis, analysis.compare_figure, result, key=f"cmp_{analysis.name}_{index}")
                done.append(ui.source(result))
    return done


if comparison is None:
    st.info("Pick a second model and the analyses, then press **Compare**.")
elif not comparison.b:
    st.error("Name the second model: pick it in the list, or choose Other and give a directory or hub id.")
elif not comparison.analyses:
    st.error("Pick at least one analysis to compare.")
else:
    overlay = st.container()  # drawn above the analyses, once they have run
    sources = []
    for name in comparison.analyses:
        analysis = COMPARABLE[name]
        request = ui.guarded(lambda analysis=analysis: analysis.compare_request(comparison))
        if request is not None:
            sources += side_by_side(analysis, (model_a, comparison.b), request)
    with overlay:
        if sources:
            title = f"{catalog.display_name(model_a)} vs {catalog.display_name(comparison.b)} on normalised depth"
            spec = FigureSpec(OVERLAY, tuple(sources), title)
            figure = ui.guarded(lambda: build_figure(ui.workbench(), spec))
            if figure is not None:
                ui.plot(figure, "cmp_overlay", spec, name="compare-overlay")
