"""Page tests (AppTest) for the lens suite: tuned lens, latent language, depth use, on tiny models."""

from __future__ import annotations

import json
import time

import pytest

import ui
from tests.page_helpers import decode_plotly, open_page


def test_depth_use_page(app, tiny_dirs):
    at = open_page(app, "app_pages/depth_use.py", str(tiny_dirs["llama"]))
    at.text_area(key="du_prompt").input("The capital of France is")
    at.button[0].click().run()
    assert not at.exception and not at.error
    contrib, skip = (json.loads(chart.proto.spec)["data"] for chart in at.get("plotly_chart"))
    assert len(decode_plotly(contrib[0]["y"])) == 3  # one value per block of the tiny model
    assert (decode_plotly(skip[0]["y"]) > 0).all()  # skipping any block changes the output


def test_latent_language_page_reports_no_usable_words(app, tiny_dirs):
    at = open_page(app, "app_pages/latent_language.py", str(tiny_dirs["gpt2"]))
    at.button[0].click().run()
    assert not at.exception
    assert "single token" in at.error[0].value  # the tiny tokenizer knows no French words


def test_tuned_lens_page_trains_and_compares(app, tiny_dirs):
    at = open_page(app, "app_pages/tuned_lens.py", str(tiny_dirs["llama"]))
    at.number_input(key="tl_chunk").set_value(32)
    at.number_input(key="tl_steps").set_value(3)
    at.button(key="tl_start").click().run()
    assert not at.exception and not at.error
    trainer = next(iter(ui._workbench().runtime.trainers._trainers.values()))
    deadline = time.monotonic() + 120
    while trainer.status().state == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainer.status().state == "done" and trainer.status().step == 3
    at.run()
    assert any("3 steps trained" in md.value for md in at.markdown)
    at.number_input(key="tl_eval").set_value(2)
    at.button(key="FormSubmitter:tl_compare-Compare lenses").click().run()
    assert not at.exception and not at.error
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    held_out = next(c for c in charts if "held-out" in c["layout"]["title"]["text"])
    assert len(held_out["data"]) == 6  # logit and tuned lens in three panels
    assert "trained 3 steps" in held_out["layout"]["title"]["text"]
    assert any("only 3 training steps" in w.value for w in at.warning)  # an under-trained lens is flagged


def test_linear_shortcut_on_the_tuned_lens_page_needs_no_training(app, tiny_dirs):
    at = open_page(app, "app_pages/tuned_lens.py", str(tiny_dirs["llama"]))
    at.number_input(key="ls_fit").set_value(16)
    at.number_input(key="ls_eval").set_value(2)
    at.button(key="FormSubmitter:ls_form-Fit and compare").click().run()
    assert not at.exception and not at.error
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    held_out = next(c for c in charts if "held-out" in c["layout"]["title"]["text"])
    assert "linear shortcut" in held_out["layout"]["title"]["text"]
    assert "fitted in closed form" in held_out["layout"]["title"]["text"]
    kl_logit, kl_shortcut = (decode_plotly(trace["y"]) for trace in held_out["data"][:2])
    assert kl_shortcut[-1] == pytest.approx(kl_logit[-1], abs=1e-9)  # the last slot is the model's own output


def test_tuned_lens_compare_before_training_is_a_clear_error(app, tiny_dirs):
    at = open_page(app, "app_pages/tuned_lens.py", str(tiny_dirs["gpt2"]))
    at.button(key="FormSubmitter:tl_compare-Compare lenses").click().run()
    assert not at.exception
    assert any("not been trained" in e.value for e in at.error)


@pytest.fixture(autouse=True)
def _stop_trainers():
    yield
    try:
        for trainer in ui._workbench().runtime.trainers._trainers.values():
            trainer.stop()
    except Exception:
        pass
