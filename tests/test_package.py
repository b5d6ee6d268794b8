"""The package: pyproject's pins agree with requirements.txt, the console script's commands, and
the notebook API (three analyses through ``workbench.Notebook`` equal the service's numbers)."""

from __future__ import annotations

import sys
import tomllib
import types

import numpy as np
import pytest

from workbench import cli_serve
from workbench.analyses import logit_lens, neuron_classes, patching
from workbench.analyses.patching import IOI_PAIR
from workbench.config import PROJECT_ROOT
from workbench.errors import BadRequest


def test_pyproject_pins_the_tested_versions_of_requirements_txt():
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    pinned = [line.split("#")[0].strip() for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(declared["dependencies"]) == sorted(line for line in pinned if line)
    assert declared["scripts"]["layerlens"] == "workbench.cli:main"


def test_layerlens_help_lists_every_command(capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: layerlens")
    for command in ("serve", "run", "regenerate", "list", "cache"):
        assert f"    {command}" in out


def test_serve_runs_the_app_of_the_clone(tmp_path):
    line = cli_serve.command(8600, None, ["--", "--server.headless", "true"])
    assert line[1:5] == ["-m", "streamlit", "run", str(PROJECT_ROOT / "app.py")]
    assert line[5:] == ["--server.port", "8600", "--server.headless", "true"]
    with pytest.raises(BadRequest, match="pip install -e"):  # an installation without the app says so
        cli_serve.command(None, None, [], app=tmp_path / "app.py")


def test_notebook_api_equals_the_service(workbench, tiny_dirs, tmp_path):
    from workbench import Notebook, Workbench

    assert Workbench is type(workbench)
    model = str(tiny_dirs["llama"])
    nb = Notebook(model, workbench=Workbench(workbench.settings.with_cache_dir(tmp_path / "nb")))  # its own cache
    lens = nb.logit_lens(prompt="The capital of France is", target=" Paris")
    expected = workbench.run(logit_lens.ANALYSIS, model, logit_lens.LogitLensRequest("The capital of France is",
                                                                                      " Paris"))
    np.testing.assert_array_equal(lens.result.kl_to_final, expected.kl_to_final)
    np.testing.assert_array_equal(lens.target_rank, expected.target_rank)  # attributes read through
    classes = nb.neuron_classes()
    np.testing.assert_array_equal(classes.result.class_ids, workbench.run(
        neuron_classes.ANALYSIS, model, neuron_classes.NeuronClassRequest()).class_ids)
    clean, corrupted, answer, wrong = IOI_PAIR
    pair = nb.run("patching", clean=clean, corrupted=corrupted, answer=answer, wrong=wrong)
    direct = workbench.run(patching.ANALYSIS, model, patching.PatchingRequest(*IOI_PAIR))
    np.testing.assert_array_equal(pair.result.act_resid, direct.act_resid)
    np.testing.assert_array_equal(pair.relp_resid, direct.relp_resid)
    assert pair.figure("resid").layout.title.text == patching.ANALYSIS.figure("resid", direct).layout.title.text
    with pytest.raises(BadRequest, match="has no field"):
        nb.logit_lens(prompt="x", colour="red")
    with pytest.raises(AttributeError, match="analyses: logit_lens"):
        nb.no_such_analysis  # noqa: B018
    nb.workbench.close()


def test_a_notebook_result_displays_every_figure(workbench, tiny_dirs, monkeypatch):
    from workbench import Notebook

    shown = []
    display_module = types.ModuleType("IPython.display")
    display_module.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    result = Notebook(str(tiny_dirs["gpt2"]), workbench=workbench).logit_lens(prompt="Hello world")
    result._ipython_display_()
    assert [fig.layout.title.text for fig in shown] == [
        logit_lens.ANALYSIS.figure(name, result.result).layout.title.text for name in ("heatmap", "layer_curves")]
