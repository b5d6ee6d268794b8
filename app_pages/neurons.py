"""Neurons page: weight-based neuron classes per layer, and a neuron explorer
(cosines and class, vocabulary projection, top corpus contexts, ablation / amplification)."""

import streamlit as st

import ui
from workbench.analyses.neuron_classes import CLASS_NAMES, NeuronClassRequest
from workbench.analyses.neuron_contexts import contexts_of
from workbench.analyses.neuron_effect import NeuronEffectRequest
from workbench.analyses.neuron_vocab import NeuronVocabRequest
from workbench.export import spec_of
from workbench.figures import display_token
from workbench.figures import neuron_classes as figures
from workbench.registry import entry

st.title("Neurons")
st.caption(
    "Each MLP neuron classified from its weights alone (Gerstner & Schütze 2025): cos(w_in, w_out) and, for "
    "gated MLPs, cos(w_gate, w_out) and cos(w_gate, w_in) after flipping w_in and w_out together so that "
    "cos(w_gate, w_in) ≥ 0 (the MLP computes the same function). Thresholds ±0.5. The grey band is where "
    "the cosine of two random directions falls (Beta null model)."
)
model_name = ui.selected_model()
wb = ui.workbench()

# ---------------------------------------------------------------------- classes per layer
with st.form("neuron_classes_form"):
    ui.url_default("nc_fold", False)
    fold = st.checkbox("Fold the preceding norm's weights into w_gate and w_in", key="nc_fold")
    submitted = st.form_submit_button("Classify all neurons", type="primary")
if submitted or ui.opened_from_link("nc_request", ["nc_fold"]):
    st.session_state["nc_request"] = (model_name, bool(fold))
    ui.share({"nc_fold": bool(fold)})

classes = None
if "nc_request" in st.session_state:
    req_model, req_fold = st.session_state["nc_request"]
    class_request = NeuronClassRequest(fold_norm=req_fold)

    classes = ui.compute(
        f"Neuron classes of {req_model}", lambda report: wb.neuron_classes(req_model, class_request, report)
    )
    if classes is not None:
        for figure, key in (("class_fractions", "nc_fractions"),
                            ("class_fractions_no_orthogonal", "nc_fractions_no_orth"),
                            ("cosine_distribution", "nc_cosines")):
            spec = spec_of("neuron_classes", figure, req_model, class_request)
            ui.chart(entry("neuron_classes").figure(figure, classes), key, spec)
        lo, hi = classes.null_band
        st.caption(
            f"{classes.n_layers} layers × {classes.n_neurons} neurons, d_model = {classes.d_model}. "
            f"{classes.null_coverage:.0%} of random cosines fall in [{lo:.3f}, {hi:.3f}]; "
            f"{classes.outside_null.mean():.1%} of this model's cos(w_in, w_out) fall outside."
        )
else:
    st.info("Press **Classify all neurons** (from the weights: seconds, then cached).")

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
    request = NeuronClassRequest(fold_norm=bool(st.session_state.get("nc_fold", False)))
    rows = ui.guarded(
        lambda: wb.neurons_of_class(model_name, request, class_name, None if only_layer < 0 else int(only_layer))
    )
    if rows is not None:
        st.dataframe(
            [{"layer": la, "neuron": n, "cos(w_in, w_out)": round(c, 3)} for la, n, c in rows], key="ns_class_rows"
        )
        if not rows:
            st.info(f"No {class_name} neurons here.")
if by_token:
    rows = ui.guarded(lambda: wb.neuron_search_token(model_name, token))
    if rows is not None:
        st.dataframe(
            [{"layer": la, "neuron": n, "cos(w_out, W_U[token])": round(c, 3)} for la, n, c in rows],
            key="ns_token_rows",
        )

# ---------------------------------------------------------------------- explorer
st.header("Neuron explorer")
with st.form("neuron_explorer_form"):
    cols = st.columns(4)
    layer = cols[0].number_input("Layer", 0, 200, 0, key="ne_layer")
    neuron = cols[1].number_input("Neuron", 0, 100_000, 0, key="ne_neuron")
    factor = cols[2].number_input("Scale activation by (0 = ablate)", -100.0, 100.0, 0.0, key="ne_factor")
    with_contexts = cols[3].checkbox("Top corpus contexts (first time: runs the corpus)", False, key="ne_ctx")
    prompt = st.text_area("Prompt for the causal check", "The capital of France is", key="ne_prompt")
    explore = st.form_submit_button("Explore neuron", type="primary")
if explore:
    st.session_state["ne_request"] = (
        model_name,
        int(layer),
        int(neuron),
        float(factor),
        prompt,
        bool(with_contexts),
        bool(st.session_state.get("nc_fold", False)),
    )

if "ne_request" in st.session_state:
    req_model, req_layer, req_neuron, req_factor, req_prompt, req_ctx, req_fold = st.session_state["ne_request"]

    vocab_request = ui.guarded(lambda: NeuronVocabRequest(req_layer, req_neuron, fold_norm=req_fold))
    vocab = vocab_request and ui.guarded(lambda: wb.neuron_vocab(req_model, vocab_request))
    if vocab is not None:
        gate = (
            ""
            if vocab.cos_gate_out != vocab.cos_gate_out
            # nan: not gated
            else (f", cos(gate, out) = {vocab.cos_gate_out:.3f}, cos(gate, in) = {vocab.cos_gate_in:.3f}")
        )
        st.subheader(f"Layer {vocab.layer}, neuron {vocab.neuron}: {vocab.class_name}")
        st.write(
            f"cos(in, out) = {vocab.cos_in_out:.3f}{gate}" + (" (w_in and w_out sign-flipped)" if vocab.flipped else "")
        )
        ui.chart(figures.vocab_projection(vocab), "ne_vocab",
                 spec_of("neuron_vocab", "vocab_projection", req_model, vocab_request))

        effect_request = ui.guarded(lambda: NeuronEffectRequest(req_prompt, req_layer, req_neuron, factor=req_factor))
        effect = effect_request and ui.compute("Causal check",
                                               lambda report: wb.neuron_effect(req_model, effect_request, report))
        if effect is not None:
            ui.chart(figures.effect(effect), "ne_effect", spec_of("neuron_effect", "effect", req_model, effect_request))
            st.caption(
                "Top tokens with the neuron scaled: "
                + ", ".join(
                    f"{display_token(t)} {p:.3f}"
                    for t, p in zip(effect.scaled_top_tokens, effect.scaled_top_probs, strict=True)
                )
            )
        if req_ctx:
            contexts = ui.compute(
                "Top contexts over the bundled corpus", lambda report: wb.neuron_contexts(req_model, progress=report)
            )
            if contexts is not None:
                st.caption(
                    "Strongest activations (either sign) of this neuron over the bundled corpus, "
                    f"{contexts.chunk_tokens.shape[0]} chunks of {contexts.chunk_tokens.shape[1]} tokens."
                )
                st.dataframe(
                    [
                        {
                            "activation": round(v, 4),
                            "before": display_token(b) if b else "",
                            "token": display_token(t),
                            "after": a,
                        }
                        for v, b, t, a in contexts_of(contexts, req_layer, req_neuron)
                    ],
                    key="ne_contexts",
                )
else:
    st.info("Pick a layer and neuron and press **Explore neuron**.")
