"""LayerLens workbench: Streamlit entry point.

Sets the page config, draws the shared sidebar (model picker) and navigates
between the pages in ``app_pages/`` (not ``pages/``: that name turns on
Streamlit's legacy auto-discovery, which breaks direct page URLs on a fresh server).
Computes nothing: pages call ``workbench.service`` through ``ui``.
Run with ``make run`` (see README).
"""

import streamlit as st

import ui

st.set_page_config(page_title="LayerLens", layout="wide")
page = st.navigation(
    [
        st.Page("app_pages/home.py", title="Home", default=True),
        st.Page("app_pages/logit_lens.py", title="Logit lens", url_path="logit_lens"),
        st.Page("app_pages/lens_comparison.py", title="Lens comparison", url_path="lens_comparison"),
        st.Page("app_pages/tuned_lens.py", title="Tuned lens", url_path="tuned_lens"),
        st.Page("app_pages/future_lens.py", title="Future lens", url_path="future_lens"),
        st.Page("app_pages/patchscope.py", title="Patchscope", url_path="patchscope"),
        st.Page("app_pages/decoder_lens.py", title="DecoderLens", url_path="decoder_lens"),
        st.Page("app_pages/latent_language.py", title="Latent language", url_path="latent_language"),
        st.Page("app_pages/attention_sinks.py", title="Attention sinks", url_path="attention_sinks"),
        st.Page("app_pages/depth_use.py", title="Depth use", url_path="depth_use"),
        st.Page("app_pages/neurons.py", title="Neurons", url_path="neurons"),
        st.Page("app_pages/patching.py", title="Patching", url_path="patching"),
        st.Page("app_pages/circuits.py", title="Circuits", url_path="circuits"),
        st.Page("app_pages/concept_depth.py", title="Concept depth", url_path="concept_depth"),
        st.Page("app_pages/compare.py", title="Compare models", url_path="compare"),
    ]
)
ui.model_picker()
page.run()
