"""Page test (AppTest) for the Patchscope page, on a tiny model."""

from __future__ import annotations

import json

from tests.page_helpers import assert_error, chart_specs, decode_plotly, open_page

SUBMIT = "FormSubmitter:patchscope_form-Run Patchscope"


def test_patchscope_page_draws_the_grid_and_the_diagonal(app, tiny_dirs):
    at = open_page(app, "app_pages/patchscope.py", str(tiny_dirs["llama"]))
    at.text_area(key="ps_prompt").input("The capital of France is")
    at.multiselect(key="ps_src").set_value([0, 2, 3])
    at.multiselect(key="ps_tgt").set_value([2, 3])
    at.number_input(key="ps_n").set_value(2)
    at.button(key=SUBMIT).click().run()
    grid, strip = chart_specs(at)
    assert "Patchscope grid" in grid["layout"]["title"]["text"]
    z = decode_plotly(grid["data"][0]["z"])
    assert z.shape == (3, 2) and ((z > 0) & (z <= 1)).all()
    assert grid["layout"]["yaxis"]["ticktext"] == ["embed", "1", "2"]
    assert strip["layout"]["xaxis"]["ticktext"] == ["1", "2"]  # slots 2 and 3 are source and target slots
    assert any("own next tokens" in md.value for md in at.markdown)
    assert at.query_params["ps_src"] == ["0", "2", "3"]  # the request is in the link


def test_patchscope_page_refuses_a_placeholder_outside_the_target(app, tiny_dirs):
    at = open_page(app, "app_pages/patchscope.py", str(tiny_dirs["gpt2"]))
    at.number_input(key="ps_at").set_value(500)
    at.button(key=SUBMIT).click().run()
    assert_error(at, "placeholder position 500 is outside")
    assert not at.get("plotly_chart")


def test_patchscope_page_reads_the_state_into_the_typed_target_prompt(app, tiny_dirs):
    at = open_page(app, "app_pages/patchscope.py", str(tiny_dirs["qwen2"]))
    at.text_input(key="ps_target").input("one two three ?")
    at.multiselect(key="ps_src").set_value([1])
    at.multiselect(key="ps_tgt").set_value([1])
    at.button(key=SUBMIT).click().run()
    grid, _strip = chart_specs(at)
    assert "?" in grid["layout"]["title"]["text"].split(" read at ")[1]  # the placeholder: the target's last token
    assert "source slot 0 → target slot 0" in json.dumps(grid, ensure_ascii=False)  # slot 1 = block 0's output
