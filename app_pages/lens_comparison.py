"""Lens comparison page: every lens of the model side by side on one prompt and on held-out text.

Fitted lenses (linear shortcut, Jacobian lens) are fitted once per model, stored and reused across
sessions; they can be fitted in the background here, with progress. Widgets -> request -> service ->
figures; nothing is computed here."""

import streamlit as st

import ui
from workbench.analyses import lens_comparison
from workbench.analyses.lens_comparison import ANALYSIS, FITTED, LENS_TITLES, LENSES, LensComparisonRequest
from workbench.analyses.tuned_lens import TunedLensConfig

model_name = ui.header(
    "Lens comparison",
    "Every lens on the same residual states, with the same measures. Rows are lenses, columns are layers. "
    "Logit lens: the identity (nostalgebraist 2020). Linear shortcut: least-squares maps to the last layer "
    "(Din et al. 2023). Jacobian lens: the corpus-averaged Jacobian of the last layer's state "
    "(anthropics/jacobian-lens). Tuned lens: trained translators (Belrose et al. 2023), once trained on the Tuned "
    "lens page. Patchscope: the state transplanted into an identity prompt (Ghandeharioun et al. 2024). Held-out "
    "text: the Python Language Reference's held-out topics.")
wb = ui.workbench()
form = ui.RequestForm("lc", LensComparisonRequest("The capital of France is"), skip=("tuned_step",),
                      names={"eval_chunks": "eval", "chunk_tokens": "chunk", "identity_prompt": "identity"},
                      bounds={"k": (1, 20), "eval_chunks": (0, 16), "chunk_tokens": (16, 512)},
                      choices={"lenses": {name: LENS_TITLES[name] for name in LENSES}})
shown = form.request or form.linked or form.default

st.subheader("Fitted lenses")
st.caption("Fitted once per model and corpus, stored, and reused by every session. A lens that is not stored yet is "
           "fitted when a comparison asks for it (with progress), or here in the background.")


def fit_statuses() -> bool:
    """One line per fitted lens; returns whether any is fitting (so the box keeps refreshing)."""
    fitting = False
    for name in FITTED:
        config = lens_comparison.fit_config(name, shown)
        status = ui.guarded(lambda c=config: wb.lens_fit_status(model_name, c))
        if status is None:
            continue
        cols = st.columns([3, 1, 1])
        title = LENS_TITLES[name]
        if status.state == "fitting":
            fitting = True
            cols[0].progress(min(1.0, max(0.0, status.fraction)), text=ui.escape(f"{title}: {status.message}"))
        elif status.state == "stored":
            cols[0].markdown(ui.escape(f"{title}: stored, fitted on {status.tokens:d} tokens "
                                       f"in {status.seconds:.1f} s."))
        else:
            cols[0].markdown(ui.escape(f"{title}: {status.state}.") + (f" {ui.escape(status.message)}"
                                                                     if status.message else ""))
        if status.state not in ("fitting", "stored") and cols[1].button("Fit in background", key=f"lc_fit_{name}"):
            ui.guarded(lambda c=config: wb.start_lens_fit(model_name, c))
            fitting = True
        if status.state == "fitting" and cols[2].button("Stop", key=f"lc_stop_{name}"):
            ui.guarded(lambda c=config: wb.stop_lens_fit(model_name, c))
    return fitting


def status_box() -> None:
    if fit_statuses():
        st.caption("Refreshing every 2 s while a lens is fitting.")


with st.spinner(f"Loading {ui.escape(model_name)}"):
    busy = any(getattr(ui.guarded(lambda n=name: wb.lens_fit_status(model_name, lens_comparison.fit_config(n, shown))),
                       "state", "") == "fitting" for name in FITTED)
st.fragment(status_box, run_every=2.0 if busy else None)()

tuned = ui.guarded(lambda: wb.tuned_lens_status(model_name, TunedLensConfig(shown.corpus, shown.chunk_tokens)))
tuned_step = tuned.step if tuned is not None else 0
if not tuned_step:
    st.caption("No tuned lens is trained for this model yet: train one on the Tuned lens page to add its row.")

st.subheader("Compare")
with form.box("lc_form", "Compare lenses"):
    st.text_area("Prompt", key=form.key("prompt"), height=68)
    cols = st.columns([3, 1, 1])
    cols[0].multiselect("Lenses (rows)", list(LENSES), key=form.key("lenses"), format_func=LENS_TITLES.get)
    cols[1].number_input("Top-k on hover", 1, 20, key=form.key("k"))
    cols[2].number_input("Held-out chunks", 0, 16, key=form.key("eval_chunks"))
    st.text_input("Patchscope identity prompt (its last token is replaced by the state)",
                  key=form.key("identity_prompt"))

wanted = st.session_state.get(form.key("lenses")) or shown.lenses
live = st.empty()


def show_partial(partial) -> None:
    with live.container():
        ui.live_chart(ANALYSIS.figure("grid", partial))
        if partial.eval_tokens:
            st.caption(f"Held-out statistics so far: {partial.eval_tokens:d} tokens (more chunks are running).")
            ui.live_chart(ANALYSIS.figure("held_out", partial))
        else:
            st.caption("Held-out statistics are being computed.")


result = form.run(ANALYSIS, "Press **Compare lenses** to decode the prompt under every chosen lens.",
                  on_partial=show_partial, tuned_step=tuned_step if "tuned" in wanted else 0)
if result is not None:
    live.empty()
    ui.chart(ANALYSIS, "grid", result, key="lc_grid")
    ui.chart(ANALYSIS, "held_out", result, key="lc_held_out")
    ui.chart(ANALYSIS, "fitting_cost", result, key="lc_cost")
