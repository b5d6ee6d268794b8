"""Helpers shared by the AppTest page tests: a fresh app on a throwaway cache, picking a model
on a page, opening a shared link, checking an error message, and decoding plotly 7's
binary-encoded arrays."""

from __future__ import annotations

import json

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


def open_link(app: AppTest, page: str, params: dict) -> AppTest:
    """A new session opened on a shared link: ``page`` with ``params`` in its query string.
    (``app`` provides the throwaway cache; its own session has already run without the link.)"""
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=180)
    at.query_params.update(params)
    return at.switch_page(page).run()


def url_list(value) -> list[str]:
    """A query parameter's values (AppTest gives one value as a plain string)."""
    return value if isinstance(value, list) else [value]


def chart_specs(at: AppTest) -> list[dict]:
    """The page ran without an error or traceback: its plotly figures, as JSON."""
    assert not at.exception and not at.error, [e.value for e in at.error]
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def assert_error(at: AppTest, text: str, charts: int = 0) -> None:
    """The page says ``text`` in its first error message (no traceback) and draws ``charts`` charts."""
    assert not at.exception
    assert text in at.error[0].value
    assert len(at.get("plotly_chart")) == charts


def decode_plotly(value):
    """plotly 7 encodes arrays as {dtype, bdata, shape}: decoded as the export does."""
    return export.plotly_array(value)
