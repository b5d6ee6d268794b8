"""Page tests with Streamlit's AppTest: the logit lens page end to end on a tiny model."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.page_helpers import assert_error, chart_specs, decode_plotly, open_page
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
    charts = chart_specs(at)
    assert len(charts) == 2
    z = decode_plotly(charts[0]["data"][0]["z"])
    n_tokens = 5  # "The| capital| of| France| is" in the tiny tokenizer
    assert z.shape == (3 + 1, n_tokens)  # embed + 3 blocks
    assert ((z >= 0) & (z <= 1)).all()
    assert decode_plotly(charts[1]["data"][0]["y"])[-1] == pytest.approx(0.0, abs=1e-6)  # KL at the last layer
    captions = [c.value for c in at.caption if "colours:" in c.value]
    assert len(captions) == 2 and "viridis" in captions[0] and "Okabe" in captions[1]  # the palette actually used


def test_empty_prompt_shows_error_not_traceback(app, tiny_dirs):
    at = _pick_model(app, str(tiny_dirs["gpt2"]))
    at.text_area(key="ll_prompt").input("   ")
    at.button[0].click().run()
    assert_error(at, "empty", charts=0)


def test_unknown_model_shows_error(app):
    at = _pick_model(app, "definitely-not-a-model")
    at.button[0].click().run()
    assert_error(at, "Unknown model")


def test_multi_token_target_shows_error(app, tiny_dirs):
    at = _pick_model(app, str(tiny_dirs["gpt2"]))
    at.text_input(key="ll_target").input(" Parisxyzzy")
    at.button[0].click().run()
    assert_error(at, "not one")


@pytest.mark.parametrize("page", sorted(p.name for p in (PROJECT_ROOT / "app_pages").glob("*.py")))
def test_every_page_opens_on_the_default_model_without_computing(app, page):
    at = app.switch_page(f"app_pages/{page}").run()
    assert not at.exception and not at.error
    assert at.title and at.selectbox(key="model_choice").value == "smollm2-135m"


def test_a_result_too_large_for_the_cache_says_so_on_the_page(app, tiny_dirs):
    """With a cache limit below one result, the page shows the result and a note that it is not cached."""
    import ui

    at = open_page(app, "app_pages/logit_lens.py", str(tiny_dirs["gpt2"]))
    at.text_area(key="ll_prompt").input("A prompt no other test runs, so nothing is cached")
    store = ui._workbench().runtime.store
    limit, store.max_bytes = store.max_bytes, 100  # bytes: every result is too large
    try:
        at.button[0].click().run()
    finally:
        store.max_bytes = limit
    assert not at.exception and not at.error
    assert at.get("plotly_chart")  # the result is used
    assert any(info.value.startswith("Not cached") for info in at.info)
