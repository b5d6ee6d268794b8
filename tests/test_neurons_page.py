"""The neurons page end to end on a tiny Llama (AppTest): classes chart, explorer, contexts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.page_helpers import assert_error, chart_specs, decode_plotly, open_page
from workbench.analyses.neuron_classes import CLASS_NAMES


@pytest.fixture
def page(app, tiny_dirs):
    return open_page(app, "app_pages/neurons.py", str(tiny_dirs["llama"]))


def test_classes_and_explorer(page):
    at = page
    at.button(key="FormSubmitter:neuron_classes_form-Classify all neurons").click().run()
    specs = chart_specs(at)
    assert len(specs) == 3
    bars = specs[0]["data"]
    assert {b["name"] for b in bars} <= set(CLASS_NAMES)
    total = sum(decode_plotly(b["y"]) for b in bars)
    np.testing.assert_allclose(total, 1.0, atol=1e-9)  # stacked shares fill every layer
    assert len(total) == 3  # the tiny model's three layers

    at.number_input(key="ne_layer").set_value(1)
    at.number_input(key="ne_neuron").set_value(5)
    at.number_input(key="ne_factor").set_value(0.0)
    at.checkbox(key="ne_ctx").check()
    at.button(key="FormSubmitter:neuron_explorer_form-Explore neuron").click().run()
    specs = chart_specs(at)
    assert "Layer 1, neuron 5" in at.subheader[0].value
    assert len(specs) == 5  # 3 class charts + vocabulary projection + effect
    effect = specs[-1]["data"]
    assert effect[0]["name"] == "clean" and len(decode_plotly(effect[0]["y"])) == 5
    contexts = at.dataframe[-1].value
    assert len(contexts) == 8 and (np.diff(np.abs(contexts["activation"].to_numpy())) <= 1e-4).all()


def test_bad_neuron_shows_error(page):
    at = page
    at.number_input(key="ne_layer").set_value(7)
    at.button(key="FormSubmitter:neuron_explorer_form-Explore neuron").click().run()
    assert_error(at, "layers 0..2", charts=0)
