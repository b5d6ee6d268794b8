"""Helpers shared by the AppTest page tests: a fresh app on a throwaway cache, picking a model
on a page, and decoding plotly 7's binary-encoded arrays."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui
from workbench import export
from workbench.config import PROJECT_ROOT


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app after its first run, on a throwaway store; converted real models are shared."""
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAYERLENS_MODELS_DIR", str(PROJECT_ROOT / "cache" / "models"))  # converted once
    st.cache_resource.clear()
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=180)  # a first run may convert a model
    at.run()
    yield at
    st.cache_resource.clear()


def open_page(at: AppTest, page: str, model: str) -> AppTest:
    """Switch to ``page`` and pick ``model`` (a directory) through the sidebar's 'Other' entry."""
    at.switch_page(page).run()
    at.selectbox(key="model_choice").set_value(ui.OTHER).run()
    at.text_input(key="model_custom").input(model).run()
    return at


def decode_plotly(value):
    """plotly 7 encodes arrays as {dtype, bdata, shape}: decoded as the export does."""
    return export.plotly_array(value)
