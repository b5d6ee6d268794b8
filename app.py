"""LayerLens workbench: Streamlit entry point.

Sets the page config, draws the model picker and navigates between pages.
Computes nothing: pages call ``workbench.service`` through ``ui``.
Run with ``make run`` (see README).
"""

import streamlit as st

import ui

st.set_page_config(page_title="LayerLens", layout="wide")
page = st.navigation(
    [
        st.Page("pages/home.py", title="Home", default=True),
        st.Page("pages/logit_lens.py", title="Logit lens", url_path="logit_lens"),
    ]
)
st.sidebar.title("LayerLens")
ui.model_picker()
page.run()
