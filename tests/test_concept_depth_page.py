"""Concept-depth page (AppTest) on tiny models: curves, depth table, noise shift, two-model comparison."""

from __future__ import annotations

from tests.page_helpers import assert_error, chart_specs, decode_plotly, open_page

SUBMIT = "FormSubmitter:cd_form-Run probes"


def test_concept_depth_page_probes_two_models_with_noise(app, tiny_dirs):
    at = open_page(app, "app_pages/concept_depth.py", str(tiny_dirs["llama"]))
    at.multiselect(key="cd_tasks").set_value(["factual"])
    at.number_input(key="cd_limit").set_value(40)
    at.number_input(key="cd_noise").set_value(2)
    at.selectbox(key="cd_compare").set_value("other: directory or hub id")
    at.text_input(key="cd_compare_custom").input(str(tiny_dirs["gpt2"]))
    at.button(key=SUBMIT).click().run()
    curves, comparison = chart_specs(at)
    lines = [t for t in curves["data"] if t.get("mode") == "lines+markers"]
    assert len(lines) == 2 * 3  # clean and noisy, three metrics each
    x = decode_plotly(lines[0]["x"])
    assert len(x) == 3 and abs(x[-1] - 1.0) < 1e-9  # three blocks on l/L
    assert all(((y := decode_plotly(t["y"])) >= 0).all() and (y <= 1).all() for t in lines)
    names = {t["name"] for t in comparison["data"] if t.get("mode") == "lines+markers"}
    assert len(names) == 2 and any(n.startswith("gpt2") for n in names)  # one clean line per model
    assert not any(str(tiny_dirs["gpt2"]) in n for n in names)  # by short name, not the server path
    table = at.dataframe[0].value
    assert len(table) == 4 and set(table["noise tokens"]) == {0, 2}
    assert table["concept depth (block)"].between(0, 2).all()


def test_concept_depth_page_without_tasks_says_what_to_do(app, tiny_dirs):
    at = open_page(app, "app_pages/concept_depth.py", str(tiny_dirs["gpt2"]))
    at.multiselect(key="cd_tasks").set_value([])
    at.button(key=SUBMIT).click().run()
    assert_error(at, "at least one bundled task", charts=0)
