"""The attention-sinks page end to end on a tiny model (Streamlit AppTest)."""

from __future__ import annotations

import numpy as np
import pytest
import streamlit as st

from tests.page_helpers import assert_error, chart_specs, decode_plotly, open_page


@pytest.fixture
def open_sinks(app):
    return lambda model_dir: open_page(app, "app_pages/attention_sinks.py", str(model_dir))


def test_probe_draws_heatmaps(open_sinks, tiny_dirs):
    at = open_sinks(tiny_dirs["gemma3_text"])
    at.text_area(key="sk_prompt").input("The capital of France is Paris.")
    at.button[0].click().run()
    charts = chart_specs(at)
    assert len(charts) == 5
    layer_token = decode_plotly(charts[0]["data"][0]["z"])
    n_tokens = len(charts[0]["layout"]["xaxis"]["ticktext"])
    assert layer_token.shape == (3, n_tokens)  # 3 blocks x tokens
    assert ((layer_token >= 0) & (layer_token <= 1)).all()
    layer_head = decode_plotly(charts[1]["data"][0]["z"])
    assert layer_head.shape == (3, 4)  # 3 blocks x 4 heads (1 KV head, grouped-query attention)
    cosine = decode_plotly(charts[3]["data"][0]["z"])
    assert cosine.shape == (4, n_tokens) and np.allclose(cosine[:, 0], 1.0, atol=1e-5)
    assert any("no BOS" in m.value for m in at.markdown)  # the tiny tokenizer adds no BOS: said so
    st.cache_resource.clear()


def test_batch_mode_and_empty_prompt_set(open_sinks, tiny_dirs):
    at = open_sinks(tiny_dirs["llama"])
    at.text_area(key="lv_prompts").input("One two three four five.\nThe capital of France is Paris.")
    at.button[1].click().run()
    onsets = chart_specs(at)[0]["data"][0]
    assert decode_plotly(onsets["y"]).shape == (4,)  # one bar per residual slot
    at.text_area(key="lv_prompts").input("   \n  ")
    at.button[1].click().run()
    assert_error(at, "empty", charts=0)
    st.cache_resource.clear()
