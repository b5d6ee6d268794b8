"""The attention-sinks page end to end on a tiny model (Streamlit AppTest)."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st
from streamlit.testing.v1 import AppTest

import ui
from tests.test_pages import _decode
from workbench.config import PROJECT_ROOT


def _page(tmp_path, monkeypatch, model_dir) -> AppTest:
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(tmp_path / "cache"))
    st.cache_resource.clear()
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("app_pages/attention_sinks.py").run()
    at.selectbox(key="model_choice").set_value(ui.OTHER).run()
    at.text_input(key="model_custom").input(str(model_dir)).run()
    return at


def test_probe_draws_heatmaps(tmp_path, monkeypatch, tiny_dirs):
    at = _page(tmp_path, monkeypatch, tiny_dirs["gemma3_text"])
    at.text_area(key="sk_prompt").input("The capital of France is Paris.")
    at.button[0].click().run()
    assert not at.exception and not at.error
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 5
    layer_token = _decode(charts[0]["data"][0]["z"])
    n_tokens = len(charts[0]["layout"]["xaxis"]["ticktext"])
    assert layer_token.shape == (3, n_tokens)  # 3 blocks x tokens
    assert ((layer_token >= 0) & (layer_token <= 1)).all()
    layer_head = _decode(charts[1]["data"][0]["z"])
    assert layer_head.shape == (3, 4)  # 3 blocks x 4 heads (1 KV head, grouped-query attention)
    cosine = _decode(charts[3]["data"][0]["z"])
    assert cosine.shape == (4, n_tokens) and np.allclose(cosine[:, 0], 1.0, atol=1e-5)
    assert any("no BOS" in m.value for m in at.markdown)  # the tiny tokenizer adds no BOS: said so
    st.cache_resource.clear()


def test_batch_mode_and_empty_prompt_set(tmp_path, monkeypatch, tiny_dirs):
    at = _page(tmp_path, monkeypatch, tiny_dirs["llama"])
    at.text_area(key="lv_prompts").input("One two three four five.\nThe capital of France is Paris.")
    at.button[1].click().run()
    assert not at.exception and not at.error
    onsets = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert _decode(onsets["y"]).shape == (4,)  # one bar per residual slot
    at.text_area(key="lv_prompts").input("   \n  ")
    at.button[1].click().run()
    assert not at.exception
    assert "empty" in at.error[0].value
    st.cache_resource.clear()
