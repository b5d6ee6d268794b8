"""Page tests with Streamlit's AppTest: the logit lens page end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.page_helpers import decode_plotly, open_page
from workbench.config import PROJECT_ROOT


def _pick_model(at: AppTest, name: str) -> AppTest:
    return open_page(at, "app_pages/logit_lens.py", name)


def test_home_page_lists_default_model(app):
    assert not app.exception
    assert "LayerLens workbench" in app.title[0].value
    assert any("dequantized" in info.value for info in app.info)


def test_logit_lens_page_draws_heatmap(app, tiny_dirs):
    at = _pick_model(app, str(tiny_dirs["llama"]))
    at.text_area(key="ll_prompt").input("The capital of France is")
    at.text_input(key="ll_target").input(" Paris")
    at.button[0].click().run()
    assert not at.exception and not at.error
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    heatmap = json.loads(charts[0].proto.spec)["data"][0]
    z = decode_plotly(heatmap["z"])
    n_tokens = 5  # "The| capital| of| France| is" in the tiny tokenizer
    assert z.shape == (3 + 1, n_tokens)  # embed + 3 blocks
    assert ((z >= 0) & (z <= 1)).all()
    curves = json.loads(charts[1].proto.spec)["data"]
    assert decode_plotly(curves[0]["y"])[-1] == pytest.approx(0.0, abs=1e-6)  # KL at the last layer


def test_empty_prompt_shows_error_not_traceback(app, tiny_dirs):
    at = _pick_model(app, str(tiny_dirs["gpt2"]))
    at.text_area(key="ll_prompt").input("   ")
    at.button[0].click().run()
    assert not at.exception
    assert "empty" in at.error[0].value
    assert len(at.get("plotly_chart")) == 0


def test_unknown_model_shows_error(app):
    at = _pick_model(app, "definitely-not-a-model")
    at.button[0].click().run()
    assert not at.exception
    assert "Unknown model" in at.error[0].value


def test_multi_token_target_shows_error(app, tiny_dirs):
    at = _pick_model(app, str(tiny_dirs["gpt2"]))
    at.text_input(key="ll_target").input(" Parisxyzzy")
    at.button[0].click().run()
    assert not at.exception
    assert "not one" in at.error[0].value


@pytest.mark.parametrize("page", sorted(p.name for p in (PROJECT_ROOT / "app_pages").glob("*.py")))
def test_every_page_opens_on_the_default_model_without_computing(app, page):
    at = app.switch_page(f"app_pages/{page}").run()
    assert not at.exception and not at.error
    assert at.title and at.selectbox(key="model_choice").value == "smollm2-135m"
