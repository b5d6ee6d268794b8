"""Patching page end to end on a tiny model with Streamlit's AppTest."""

from __future__ import annotations

import numpy as np
import pytest

from tests.page_helpers import assert_error, chart_specs, decode_plotly, open_page


def _patching_page(at, name: str):
    return open_page(at, "app_pages/patching.py", name)


def test_patching_page_draws_three_maps_per_component(app, tiny_dirs):
    at = _patching_page(app, str(tiny_dirs["llama"]))
    at.button[0].click().run()  # the default IOI pair
    charts = chart_specs(at)
    assert len(charts) == 4  # resid, attn, mlp, heads
    resid = charts[0]["data"]
    assert len(resid) == 3  # activation patching | AtP | RelP side by side
    maps = [decode_plotly(trace["z"]) for trace in resid]
    assert all(m.shape == maps[0].shape for m in maps) and maps[0].shape[0] == 3  # 3 layers
    swapped = int(np.argmax(np.abs(maps[0][0])))
    assert maps[0][0, swapped] == pytest.approx(1.0, abs=1e-3)  # block-0 patch at the swapped name restores m


def test_patching_page_reports_mismatched_lengths(app, tiny_dirs):
    at = _patching_page(app, str(tiny_dirs["gpt2"]))
    at.text_input(key="pt_corrupted").input("When Mary and John went to the store, Mary gave a drink to the")
    at.button[0].click().run()
    assert_error(at, "same number of tokens", charts=0)
