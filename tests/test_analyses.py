"""Every analysis of ``workbench.analyses.ANALYSES`` has the one shape the workbench relies on:
its name is its module's (and cache key's, and CLI's), its request survives the JSON round trip
that links, bundles and the CLI use, it has figures that render on a tiny model and export, and
it refuses bad input with a clear message. A new analysis is checked here without editing this file
(only ``tests/analysis_examples.py``)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from tests.analysis_examples import TEXT_FIELDS, analysis_names, examples
from tests.conftest import model_for
from workbench import export, registry
from workbench.analyses import ANALYSES, request_digest, request_json
from workbench.errors import BadPrompt, BadRequest, UnknownModel, WorkbenchError

BY_NAME = {analysis.name: analysis for analysis in ANALYSES}


def test_examples_cover_every_analysis():
    assert set(examples()) == analysis_names()
    assert len(BY_NAME) == len(ANALYSES)  # no name twice


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_name_is_module_cache_key_and_cli_name(name):
    analysis = BY_NAME[name]
    module = importlib.import_module(f"workbench.analyses.{name}")
    assert module.ANALYSIS is analysis and module.NAME == name and module.VERSION == analysis.version
    assert registry.entry(name) is analysis  # the CLI and bundles find it by that name
    assert importlib.import_module(f"workbench.figures.{name}").FIGURES is analysis.figures


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_request_survives_the_json_round_trip(name):
    analysis, request = BY_NAME[name], examples()[name]
    assert isinstance(request, analysis.Request)
    rebuilt = analysis.request(json.loads(request_json(request)))
    assert rebuilt == request and request_digest(rebuilt) == request_digest(request)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_figures_render_and_export_on_a_tiny_model(name, workbench, tiny_dirs, seq2seq_dirs):
    analysis, request = BY_NAME[name], examples()[name]
    model = model_for(analysis, tiny_dirs, seq2seq_dirs)
    if name == "latent_language":  # the tiny tokenizer splits most words: the bundled words need a real model
        with pytest.raises(BadRequest, match="single token"):
            workbench.run(analysis, model, request)
        return
    result = workbench.run(analysis, model, request)
    assert isinstance(result, analysis.Result)
    assert workbench.store.count_results(name) == 1  # stored under its own name
    assert analysis.figures, f"{name} has no figure"
    style = export.paper_style("single column")
    for figure in analysis.figures:
        fig = analysis.figure(figure, result)
        assert fig.data or fig.layout.annotations, (name, figure)  # drawn, or it says why it is empty
        data = export.figure_data(export.styled(fig, style))
        assert len(data) > 0 or not fig.data, (name, figure)  # every plotted value is in the CSV
        spec = export.spec_of(name, figure, model, request)
        bundle = export.make_bundle(workbench, spec, style, formats=())  # no browser needed for the data
        assert bundle.manifest["sources"][0]["analysis"] == name
        assert json.loads(bundle.files["figure.json"]) == json.loads(export.styled(fig, style).to_json())


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_bad_input_is_refused_with_a_message(name, workbench, tiny_dirs, seq2seq_dirs):
    analysis, request = BY_NAME[name], examples()[name]
    model = model_for(analysis, tiny_dirs, seq2seq_dirs)
    with pytest.raises(BadRequest, match=f"{name} takes a {analysis.Request.__name__}"):
        workbench.run(analysis, model, object())
    with pytest.raises(UnknownModel):
        workbench.run(analysis, "no-such-model-anywhere", request)
    with pytest.raises(BadRequest, match="no field"):
        analysis.request({**json.loads(request_json(request)), "no_such_field": 1})
    fields = {f.name for f in dataclasses.fields(request)} & set(TEXT_FIELDS)
    for field in fields:
        value = getattr(request, field)
        empty = ("",) + tuple(value[1:]) if isinstance(value, tuple) else ""
        with pytest.raises(WorkbenchError) as caught:
            workbench.run(analysis, model, dataclasses.replace(request, **{field: empty}))
        assert isinstance(caught.value, (BadPrompt, BadRequest)) and "empty" in str(caught.value), caught.value
    assert workbench.store.count_results() == 0  # nothing refused reached the store
