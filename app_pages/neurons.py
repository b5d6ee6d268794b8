"""Neurons page: weight-based neuron classes per layer, and a neuron explorer
(cosines and class, vocabulary projection, top corpus contexts, ablation / amplification)."""

import streamlit as st

import ui
from workbench.analyses import neuron_classes, neuron_contexts, neuron_effect, neuron_vocab
from workbench.analyses.neuron_classes import CLASS_NAMES, NeuronClassRequest
from workbench.analyses.neuron_contexts import contexts_of
from workbench.analyses.neuron_effect import MAX_FACTOR, NeuronEffectRequest
from workbench.analyses.neuron_vocab import NeuronVocabRequest
from workbench.figures import display_token

model_name = ui.header(
    "Neurons", "Each MLP neuron classified from its weights alone (Gerstner & Schütze 2025): cos(w_in, w_out) and, "
    "for gated MLPs, cos(w_gate, w_out) and cos(w_gate, w_in) after flipping w_in and w_out together so that "
    "cos(w_gate, w_in) ≥ 0 (the MLP computes the same function). Thresholds ±0.5. The grey band is where "
    "the cosine of two random directions falls (Beta null model).")
classes_form = ui.RequestForm("nc", NeuronClassRequest(), names={"fold_norm": "fold"})
explorer_form = ui.RequestForm("ne", NeuronEffectRequest("The capital of France is", 0, 0),
                               bounds={"layer": (0, 200), "neuron": (0, 100_000), "factor": (-MAX_FACTOR, MAX_FACTOR)})

# ---------------------------------------------------------------------- classes per layer
with classes_form.box("neuron_classes_form", "Classify all neurons"):
    st.checkbox("Fold the preceding norm's weights into w_gate and w_in", key=classes_form.key("fold_norm"))
classes = classes_form.run(neuron_classes.ANALYSIS, "Press **Classify all neurons** (from the weights: seconds, "
                           "then cached).")
if classes is not None:
    for figure, key in (("class_fractions", "nc_fractions"), ("class_fractions_no_orthogonal", "nc_fractions_no_orth"),
                        ("cosine_distribution", "nc_cosines")):
        ui.chart(neuron_classes.ANALYSIS, figure, classes, key=key)
    lo, hi = classes.null_band
    st.caption(
        f"{classes.n_layers:d} layers × {classes.n_neurons:d} neurons, d_model = {classes.d_model:d}. "
        f"{classes.null_coverage:.0%} of random cosines fall in [{lo:.3f}, {hi:.3f}]; "
        f"{classes.outside_null.mean():.1%} of this model's cos(w_in, w_out) fall outside."
    )
fold = (classes_form.request or classes_form.default).fold_norm

# ---------------------------------------------------------------------- search
st.header("Find neurons")
left, right = st.columns(2)
with left.form("neuron_class_search"):
    class_name = st.selectbox("Class", CLASS_NAMES, index=0, key="ns_class")
    only_layer = st.number_input("Only layer (-1: all)", -1, 200, -1, key="ns_layer")
    by_class = st.form_submit_button("Search by class")
with right.form("neuron_token_search"):
    token = st.text_input("Token its w_out promotes (one token, mind the leading space)", " Paris", key="ns_token")
    by_token = st.form_submit_button("Search by top token")
if by_class:
    rows = ui.guarded(lambda: ui.workbench().neurons_of_class(
        model_name, NeuronClassRequest(fold_norm=fold), class_name, None if only_layer < 0 else int(only_layer)))
    if rows is not None:
        st.dataframe(
            [{"layer": la, "neuron": n, "cos(w_in, w_out)": round(c, 3)} for la, n, c in rows], key="ns_class_rows"
        )
        if not rows:
            st.info(f"No {ui.escape(class_name)} neurons here.")
if by_token:
    rows = ui.guarded(lambda: ui.workbench().neuron_search_token(model_name, token))
    if rows is not None:
        st.dataframe(
            [{"layer": la, "neuron": n, "cos(w_out, W_U[token])": round(c, 3)} for la, n, c in rows],
            key="ns_token_rows",
        )

# ---------------------------------------------------------------------- explorer
st.header("Neuron explorer")
with explorer_form.box("neuron_explorer_form", "Explore neuron"):
    cols = st.columns(3)
    cols[0].number_input("Layer", 0, 200, key=explorer_form.key("layer"))
    cols[1].number_input("Neuron", 0, 100_000, key=explorer_form.key("neuron"))
    cols[2].number_input("Scale activation by (0 = ablate)", -MAX_FACTOR, MAX_FACTOR, key=explorer_form.key("factor"))
    st.text_area("Prompt for the causal check", key=explorer_form.key("prompt"))
    with_contexts = st.checkbox("Top corpus contexts (the first time, this runs the model over the bundled corpus)",
                                False, key="ne_ctx")
effect_request = explorer_form.submit()
if explorer_form.submitted:
    st.session_state["ne_with_contexts"] = bool(with_contexts)

if effect_request is None:
    st.info("Pick a layer and neuron and press **Explore neuron**.")
elif (vocab := ui.run(neuron_vocab.ANALYSIS, NeuronVocabRequest(effect_request.layer, effect_request.neuron,
                                                                 fold_norm=fold))) is not None:
    gate = "" if vocab.cos_gate_out != vocab.cos_gate_out else (  # nan: not gated
        f", cos(gate, out) = {vocab.cos_gate_out:.3f}, cos(gate, in) = {vocab.cos_gate_in:.3f}")
    st.subheader(f"Layer {vocab.layer:d}, neuron {vocab.neuron:d}: {ui.escape(vocab.class_name)}")
    flipped = " (w_in and w_out sign-flipped)" if vocab.flipped else ""
    st.text(f"cos(in, out) = {vocab.cos_in_out:.3f}{gate}{flipped}")
    ui.chart(neuron_vocab.ANALYSIS, "vocab_projection", vocab, key="ne_vocab")

    if (effect := ui.run(neuron_effect.ANALYSIS, effect_request, label="Causal check")) is not None:
        ui.chart(neuron_effect.ANALYSIS, "effect", effect, key="ne_effect")
        st.caption("Top tokens with the neuron scaled: " + ui.escape(", ".join(
            f"{display_token(t)} {p:.3f}" for t, p in zip(effect.scaled_top_tokens, effect.scaled_top_probs,
                                                          strict=True))))
    if st.session_state.get("ne_with_contexts") and (contexts := ui.run(
            neuron_contexts.ANALYSIS, neuron_contexts.default_request(),
            label="Top contexts over the bundled corpus")) is not None:
        st.caption(
            "Strongest activations (either sign) of this neuron over the bundled corpus, "
            f"{contexts.chunk_tokens.shape[0]:d} chunks of {contexts.chunk_tokens.shape[1]:d} tokens."
        )
        st.dataframe(
            [{"activation": round(v, 4), "before": display_token(b) if b else "", "token": display_token(t),
              "after": a} for v, b, t, a in contexts_of(contexts, effect_request.layer, effect_request.neuron)],
            key="ne_contexts",
        )
