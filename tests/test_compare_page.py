"""AppTest page tests for the compare page, the export controls under every chart and shareable
URLs (page state in the query string)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.page_helpers import chart_specs, decode_plotly, open_link, open_page, url_list
from workbench import summaries
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.analyses.neuron_classes import NeuronClassRequest
from workbench.service import Workbench

PROMPT = "The capital of France is"


def test_compare_two_models_side_by_side_and_on_depth(app, tiny_dirs, settings):
    model_a, model_b = str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])
    at = open_page(app, "app_pages/compare.py", model_a)
    at.selectbox(key="cmp_b").set_value("Other: local directory or hub id")
    at.text_input(key="cmp_b_custom").input(model_b)
    at.multiselect(key="cmp_analyses").set_value(["logit_lens", "neuron_classes"])
    at.text_area(key="cmp_prompt").input(PROMPT)
    at.text_input(key="cmp_target").input("")
    at.button[0].click().run()
    figures = chart_specs(at)
    assert len(figures) == 1 + 2 * 2  # the overlay, then two analyses x two models
    overlay = figures[0]
    names = {t["name"] for t in overlay["data"]}
    assert names == {"llama", "gpt2"}  # short names, never the server paths (issue #15)

    # the overlay's numbers are the backend's summaries on l/L
    wb = Workbench(settings.with_cache_dir(settings.cache_dir.parent / "direct"))
    try:
        for model in (model_a, model_b):
            lens = summaries.summarise("logit_lens", wb.logit_lens(model, LogitLensRequest(PROMPT)))[0]
            enrich = summaries.summarise("neuron_classes", wb.neuron_classes(model, NeuronClassRequest()))[0]
            for expected in (lens, enrich):
                trace = next(t for t in overlay["data"] if t["name"] == lens.model_name
                             and t["xaxis"] == _axis_of(overlay, expected.metric))
                np.testing.assert_allclose(decode_plotly(trace["x"]).astype(float), expected.depth)
                np.testing.assert_allclose(decode_plotly(trace["y"]).astype(float), expected.values, atol=1e-5)
            assert lens.depth[-1] == 1.0 and lens.values[-1] == pytest.approx(0.0, abs=1e-6)
    finally:
        wb.close()
    # the URL now reproduces the comparison
    assert url_list(at.query_params["cmp_b"]) == [model_b] and url_list(at.query_params["model"]) == [model_a]
    assert url_list(at.query_params["cmp_analyses"]) == ["logit_lens", "neuron_classes"]


def _axis_of(figure: dict, metric: str) -> str:
    """The x axis ('x', 'x2', ...) of the subplot titled ``metric``."""
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    index = titles.index(metric)
    return "x" if index == 0 else f"x{index + 1}"


def test_a_shared_compare_link_runs_without_a_click(app, tiny_dirs):
    model_a, model_b = str(tiny_dirs["qwen2"]), str(tiny_dirs["gpt2"])
    link = {"model": model_a, "cmp_b": model_b, "cmp_analyses": ["attention_sinks"],
            "cmp_prompt": "one two three four five"}
    at = open_link(app, "app_pages/compare.py", link)
    charts = chart_specs(at)
    assert at.session_state["model_name"] == model_a
    assert {t["name"] for t in charts[0]["data"]} == {"qwen2", "gpt2"}
    assert charts[0]["layout"]["title"]["text"].startswith("qwen2 vs gpt2")
    assert len(charts) == 3


def test_compare_errors_are_messages(app, tiny_dirs):
    at = open_page(app, "app_pages/compare.py", str(tiny_dirs["llama"]))
    at.selectbox(key="cmp_b").set_value("Other: local directory or hub id")
    at.text_input(key="cmp_b_custom").input("/no/such/model")
    at.multiselect(key="cmp_analyses").set_value(["logit_lens"])
    at.button[0].click().run()
    assert not at.exception
    assert any("/no/such/model" in e.value for e in at.error)
    assert len(at.get("plotly_chart")) == 2  # model A's chart and the overlay of what succeeded


def test_logit_lens_link_restores_the_form_and_runs(app, tiny_dirs):
    model = str(tiny_dirs["llama"])
    at = open_link(app, "app_pages/logit_lens.py",
                   {"model": model, "ll_prompt": "one two three", "ll_target": "", "ll_top_k": "3"})
    charts = chart_specs(at)
    assert at.session_state["model_name"] == model
    assert at.text_area(key="ll_prompt").value == "one two three" and at.number_input(key="ll_top_k").value == 3
    assert len(charts) == 2


def test_bad_url_values_fall_back_to_defaults(app, tiny_dirs):
    for bad in ("lots", "9999", "-1"):  # not a number, above and below the widget's range
        at = open_link(app, "app_pages/logit_lens.py", {"model": str(tiny_dirs["llama"]), "ll_prompt": "x y",
                                                        "ll_top_k": bad})
        assert not at.exception
        assert at.number_input(key="ll_top_k").value == 5


def test_every_chart_has_export_controls(app, tiny_dirs, monkeypatch):
    at = open_page(app, "app_pages/logit_lens.py", str(tiny_dirs["llama"]))
    at.button[0].click().run()
    assert len(at.get("plotly_chart")) == 2
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Bundle (.zip)") == 2 and labels.count("Data (CSV)") == 2
    assert labels.count("SVG") == 2 and labels.count("PDF") == 2 and labels.count("PNG") == 2
    assert at.selectbox(key="ll_heatmap_export_size").value == "double column"

    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")  # no browser: a clear message, data still offered
    at.run()
    labels = [b.proto.label for b in at.get("download_button")]
    assert "SVG" not in labels and labels.count("Bundle (.zip)") == 2
    assert any("needs a Chromium browser" in i.value for i in at.info)


def test_concept_depth_link_restores_its_form(app, tiny_dirs):
    link = {"model": str(tiny_dirs["llama"]), "cd_tasks": ["emotional"], "cd_limit": "40", "cd_site": "block_output",
            "cd_noise": "2", "cd_compare": "none"}
    at = open_link(app, "app_pages/concept_depth.py", link)
    charts = chart_specs(at)
    assert at.multiselect(key="cd_tasks").value == ["emotional"] and at.number_input(key="cd_limit").value == 40
    assert at.radio(key="cd_site").value == "block_output" and at.number_input(key="cd_noise").value == 2
    assert len(charts) == 1  # the link ran the probes (clean and with noise tokens)
    table = at.dataframe[0].value
    assert sorted(table["noise tokens"].tolist()) == [0, 2] and set(table["task"]) == {"emotional"}
