"""Home page: what the workbench is and which model is selected."""

import streamlit as st

import ui
from workbench.models import catalog

PAGES = (  # page title, what it shows
    ("Logit lens", "what each layer would predict if the model stopped there (nostalgebraist 2020), as a layers × "
     "positions heatmap, with per-layer KL to the final distribution and the rank of a target token."),
    ("Attention sinks", "which tokens attract attention and how the first token's hidden state turns into a sink, "
     "on one prompt or over a prompt set."),
    ("Tuned lens", "affine translators per layer trained in the background, compared with the logit lens."),
    ("Latent language", "whether a model thinks in English: answer vs pivot-language probability per layer."),
    ("Depth use", "what each block contributes and what skipping it changes."),
    ("Neurons", "MLP neurons classified from their weights, and one neuron's vocabulary, contexts and effect."),
    ("Patching", "activation patching vs attribution (AtP) vs relevance (RelP) patching, and their faithfulness."),
    ("Concept depth", "the first layer where linear probes separate a concept, with and without noise."),
    ("Compare models", "two models side by side, every per-layer summary on normalised depth."),
)

ui.header("LayerLens workbench", "Look inside transformer language models layer by layer. Pick a model in the "
          "sidebar, then open an analysis page. Results are cached, so reopening a view is instant.")
entry = ui.guarded(lambda: catalog.resolve(ui.selected_model()))
if entry is not None:
    st.subheader(ui.escape(entry.label))
    if entry.detail or entry.note:
        st.info(ui.escape(f"{entry.detail} {entry.note}".strip()))
    if isinstance(entry.source, catalog.HubRepo) and not ui.workbench().settings.hub_allowed:
        st.warning(f"{ui.escape(entry.name)} is not a catalog model or a local directory, so it would come from "
                   "the HuggingFace hub, but hub downloads are off. Start the workbench with "
                   "`LAYERLENS_ALLOW_HUB=1` to allow them, or pick a catalog model or a local model directory.")
st.markdown(
    "Every chart can be exported for a paper (SVG, PNG, PDF, or a bundle with its data and a manifest "
    "that regenerates it), every page's address can be shared, and **Compare models** puts two models "
    "side by side on normalised depth. `python -m workbench` runs the same analyses without the UI."
)
st.markdown("**Pages**\n\n" + "\n".join(f"- **{ui.escape(title)}**: {ui.escape(text)}" for title, text in PAGES))
