"""Shareable links (AppTest): a page's request goes to the URL and comes back through the same JSON
round trip as the CLI and export bundles; a link runs exactly its request, and the form that ran it
writes the same link again."""

from __future__ import annotations

import pytest

import ui.export_panel
from tests.page_helpers import chart_specs, open_link, open_page, url_list
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.depth_use import DepthUseRequest
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.export import FigureSource
from workbench.registry import entry
from workbench.service import Workbench

LINKS = {  # page: (its request's URL parameters as a user's link carries them, the request they name)
    "logit_lens": ({"ll_prompt": "one two three", "ll_target": " two", "ll_top_k": "3"},
                   LogitLensRequest("one two three", " two", 3)),
    "attention_sinks": ({"sk_prompt": "one two three four", "sk_eps": "0.25", "sk_cos": "0.8", "sk_pm": "2",
                         "sk_ms": "1"},
                        SinkProbeRequest(eps=0.25, cos_threshold=0.8, primary_margin=2, min_secondary_lifetime=1,
                                         prompt="one two three four")),
    "depth_use": ({"du_prompt": "one two three", "du_first": "true"}, DepthUseRequest("one two three", True)),
}


@pytest.fixture
def ran(monkeypatch) -> list:
    """Every (analysis, model, request) the pages ask the backend to run."""
    calls = []
    run = Workbench.run

    def recording(self, analysis, model_name, request, *args, **kwargs):
        calls.append((analysis.name, model_name, request))
        return run(self, analysis, model_name, request, *args, **kwargs)

    monkeypatch.setattr(Workbench, "run", recording)
    return calls


@pytest.fixture
def exported(monkeypatch) -> list:
    """The export spec offered under every chart drawn (None: no regenerable bundle)."""
    specs = []
    controls = ui.export_panel._controls

    def recording(fig, key, spec, filename):
        specs.append(spec)
        return controls(fig, key, spec, filename)

    monkeypatch.setattr(ui.export_panel, "_controls", recording)
    return specs


@pytest.mark.parametrize("page", list(LINKS))
def test_a_link_runs_exactly_its_request_and_keeps_it_in_the_url(app, tiny_dirs, ran, exported, page):
    params, request = LINKS[page]
    model = str(tiny_dirs["llama"])
    at = open_link(app, f"app_pages/{page}.py", {"model": model, **params})
    charts = chart_specs(at)
    assert ran == [(page, model, request)]  # no click needed, and nothing else run
    # every chart's bundle regenerates it from that very run: one of the analysis's named figures
    assert len(exported) == len(charts) and all(spec.sources == (FigureSource(page, model, request),)
                                                for spec in exported)
    assert {spec.figure.partition(":")[2] for spec in exported} <= set(entry(page).figures)
    prefix = next(iter(params)).split("_")[0]
    assert at.session_state[f"{prefix}_request"] == request  # the request object itself is what the page keeps
    assert {name: url_list(at.query_params[name]) for name in params} == {k: [v] for k, v in params.items()}


def test_a_submitted_form_writes_a_link_that_runs_the_same_request(app, tiny_dirs, ran):
    model = str(tiny_dirs["llama"])
    at = open_page(app, "app_pages/logit_lens.py", model)
    at.text_area(key="ll_prompt").input("Alice & Bob *said* $1: [x](y)")  # Markdown and URL characters
    at.text_input(key="ll_target").input("")
    at.number_input(key="ll_top_k").set_value(7)
    at.button[0].click().run()
    assert chart_specs(at)
    submitted = at.session_state["ll_request"]
    assert submitted == LogitLensRequest("Alice & Bob *said* $1: [x](y)", "", 7)
    link = {name: at.query_params[name] for name in ("model", "ll_prompt", "ll_target", "ll_top_k")}

    again = open_link(app, "app_pages/logit_lens.py", link)
    assert chart_specs(again)
    assert again.session_state["ll_request"] == submitted
    assert ran == [("logit_lens", model, submitted)] * 2


def test_url_values_a_request_cannot_take_fall_back_to_its_defaults(app, tiny_dirs):
    model = str(tiny_dirs["gpt2"])
    at = open_link(app, "app_pages/depth_use.py", {"model": model, "du_prompt": "one two", "du_first": "maybe"})
    assert chart_specs(at)
    assert at.session_state["du_request"] == DepthUseRequest("one two", False)
    assert at.checkbox(key="du_first").value is False
    at = open_link(app, "app_pages/latent_language.py", {"model": model, "lat_target": "xx", "lat_pivot": "fr",
                                                         "lat_max": "500", "lat_task": "repetition"})
    assert not at.exception
    request = at.session_state["lat_request"]
    assert (request.task, request.target_lang, request.max_prompts) == ("repetition", "fr", 40)
    assert request.pivot_lang == "en"  # "fr" is the answer language already: the pivot keeps its default
    assert at.selectbox(key="lat_target").value == "fr" and at.slider(key="lat_max").value == 40
