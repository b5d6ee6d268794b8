"""Which models a shared link or an export bundle may open, how weights are read, and the name a
model is shown by.

A link (``?model=...``) or a bundle's manifest is written by someone else: it may name catalog
models, hub ids (under the hub rule) and directories under the model roots
(``LAYERLENS_MODEL_ROOTS``), nothing else. A path the user types into the sidebar is theirs to
open. Weights load from safetensors only unless pickles are allowed (``LAYERLENS_ALLOW_PICKLE``),
never with remote code, and titles show a model's short name, never the server path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.page_helpers import assert_error, chart_specs, open_link, open_page
from tests.tiny_models import build_model_dir
from workbench import cli, export
from workbench.analyses.logit_lens import ANALYSIS as LOGIT_LENS
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import Settings, load_settings
from workbench.errors import ModelLoadError, ModelNotAllowed, UnknownModel
from workbench.models import catalog
from workbench.service import Workbench

PROMPT = "one two three"


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A tiny llama in a directory that no model root holds."""
    return build_model_dir("llama", tmp_path_factory.mktemp("elsewhere") / "private-llama", seed=3)


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every directory the catalog hashes (hashing reads every weight file)."""
    calls = []
    digest = catalog.directory_digest

    def recording(path):
        calls.append(Path(path))
        return digest(path)

    monkeypatch.setattr(catalog, "directory_digest", recording)
    return calls


def lens_bundle(workbench: Workbench, model: str) -> export.Bundle:
    spec = export.spec_of("logit_lens", "heatmap", model, LogitLensRequest(PROMPT, top_k=3))
    return export.make_bundle(workbench, spec, export.paper_style("slide"), formats=())


# ------------------------------------------------------------------ settings


def test_model_roots_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LAYERLENS_MODEL_ROOTS", raising=False)
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("LAYERLENS_MODELS_DIR", raising=False)
    assert load_settings().shared_model_roots == ((tmp_path / "c" / "models").resolve(),)  # default: the models cache
    monkeypatch.setenv("LAYERLENS_MODEL_ROOTS", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert load_settings().shared_model_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert not load_settings().allow_pickle
    monkeypatch.setenv("LAYERLENS_ALLOW_PICKLE", "1")
    assert load_settings().allow_pickle


# ------------------------------------------------------------------ links and bundles (backend)


def test_a_linked_path_outside_the_roots_is_refused_before_it_is_read(workbench, outside, hashed):
    for name in (str(outside), str(outside / "config.json"), str(outside.parent / "no-such-dir"), "~/../../etc",
                 os.path.relpath(outside)):  # relative to the server's working directory
        with pytest.raises(ModelNotAllowed, match="LAYERLENS_MODEL_ROOTS") as caught:
            workbench.check_linked_model(name)
        assert "\n" not in str(caught.value)
    assert hashed == [] and workbench.runtime.pool._local == {}


def test_linked_catalog_models_hub_ids_and_paths_under_a_root_are_accepted(workbench, tiny_dirs, tmp_path):
    for name in ("smollm2-135m", "gemma3-270m", "HuggingFaceTB/SmolLM2-135M", str(tiny_dirs["gpt2"]),
                 str(tiny_dirs["gpt2"]) + "/../llama"):
        workbench.check_linked_model(name)  # no error
    # a hub id from a link still obeys the hub rule: no download while hub downloads are off
    with pytest.raises(UnknownModel, match="hub downloads are off"):
        workbench.local_model("HuggingFaceTB/SmolLM2-135M-not-cached")


def test_a_symlink_or_dotdot_escaping_a_root_is_refused(tmp_path, outside, tiny_dirs):
    root = tmp_path / "root"
    (root / "team").mkdir(parents=True)
    (root / "team" / "escape").symlink_to(outside, target_is_directory=True)
    os.symlink(tiny_dirs["gpt2"], root / "inside-link")
    shutil.copytree(tiny_dirs["gpt2"], root / "team" / "gpt2")
    settings = Settings(cache_dir=tmp_path / "cache", model_roots=(root,))
    for name in (root / "team" / "escape", root / "team" / ".." / ".." / outside.parent.name / outside.name,
                 root / "inside-link"):  # a link out of the root, even to another root's model
        with pytest.raises(ModelNotAllowed):
            catalog.check_linked(str(name), settings)
    catalog.check_linked(str(root / "team" / "gpt2"), settings)
    catalog.check_linked(str(root / "team" / ".." / "team" / "gpt2"), settings)
    # the root given through a symlink counts as the directory it points to
    (tmp_path / "root-alias").symlink_to(root, target_is_directory=True)
    aliased = Settings(cache_dir=tmp_path / "cache", model_roots=(tmp_path / "root-alias",))
    catalog.check_linked(str(root / "team" / "gpt2"), aliased)


def test_regenerating_a_bundle_that_names_an_unlisted_path_is_refused(workbench, outside, hashed, tmp_path):
    bundle = lens_bundle(workbench, str(outside))  # the user named it (a script): allowed to make
    hashed.clear()
    fresh = Workbench(workbench.settings.with_cache_dir(tmp_path / "fresh"))
    try:
        with pytest.raises(ModelNotAllowed, match="LAYERLENS_MODEL_ROOTS"):
            export.regenerate(fresh, export.read_bundle(_written(bundle, tmp_path / "b")))
        assert hashed == [] and fresh.runtime.pool._local == {}
    finally:
        fresh.close()


def test_regenerating_a_bundle_of_a_model_under_a_root_works(workbench, tiny_dirs, tmp_path):
    bundle = lens_bundle(workbench, str(tiny_dirs["llama"]))
    again = export.regenerate(workbench, export.read_bundle(_written(bundle, tmp_path / "b")))
    assert again.identical


def test_cli_regenerate_refuses_an_unlisted_path_with_one_line_and_exit_2(workbench, outside, tmp_path, capsys,
                                                                         monkeypatch):
    path = _written(lens_bundle(workbench, str(outside)), tmp_path / "bundle")
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(tmp_path / "cli-cache"))
    capsys.readouterr()
    assert cli.main(["regenerate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "LAYERLENS_MODEL_ROOTS" in err
    assert not (tmp_path / "bundle-regenerated").exists()


def _written(bundle: export.Bundle, directory: Path) -> Path:
    return bundle.write(directory)


# ------------------------------------------------------------------ links (app)


def test_a_link_to_an_unlisted_path_is_refused_in_the_app(app, outside, hashed, monkeypatch):
    runs = []
    monkeypatch.setattr(Workbench, "run", lambda self, *args, **kwargs: runs.append(args))
    at = open_link(app, "app_pages/logit_lens.py", {"model": str(outside), "ll_prompt": PROMPT, "ll_top_k": "3"})
    assert_error(at, "directories under the model roots")
    assert runs == [] and hashed == []
    assert at.text_input(key="model_custom").value == ""  # not filled in: the user must type it
    shown = " ".join(e.value for e in at.error)
    assert "private-llama" in shown  # the link's own text, so the user can see what was asked


def test_a_link_to_a_path_under_a_root_runs(app, tiny_dirs):
    at = open_link(app, "app_pages/logit_lens.py", {"model": str(tiny_dirs["qwen2"]), "ll_prompt": PROMPT})
    figures = chart_specs(at)
    assert figures and all(str(tiny_dirs["qwen2"]) not in json.dumps(f["layout"]) for f in figures)
    assert figures[0]["layout"]["title"]["text"].endswith("qwen2")


def test_a_path_typed_into_the_sidebar_opens_anywhere(app, outside):
    at = open_page(app, "app_pages/logit_lens.py", str(outside))
    at.text_area(key="ll_prompt").input(PROMPT)
    at.button[0].click().run()
    figures = chart_specs(at)
    assert figures and figures[0]["layout"]["title"]["text"] == "Logit lens: private-llama"
    assert all(str(outside) not in json.dumps(f["layout"]) for f in figures)


def test_typing_the_refused_path_after_the_link_opens_it(app, outside):
    at = open_link(app, "app_pages/logit_lens.py", {"model": str(outside), "ll_prompt": PROMPT})
    assert at.error
    at.text_input(key="model_custom").input(str(outside)).run()
    at.text_area(key="ll_prompt").input(PROMPT)
    at.button[0].click().run()
    assert chart_specs(at)


def test_a_second_model_from_a_compare_link_is_checked_too(app, tiny_dirs, outside, hashed):
    link = {"model": str(tiny_dirs["llama"]), "cmp_b": str(outside), "cmp_analyses": ["logit_lens"],
            "cmp_prompt": PROMPT}
    at = open_link(app, "app_pages/compare.py", link)
    assert not at.exception
    assert any("directories under the model roots" in e.value for e in at.error)
    # the first model's chart, and the overlay of its run alone; the second model was never read
    assert sorted(chart.key for chart in at.get("plotly_chart")) == ["cmp_logit_lens_0", "cmp_overlay"]
    assert outside not in hashed and tiny_dirs["llama"] in hashed


# ------------------------------------------------------------------ weights


def test_a_pickle_only_directory_is_refused_without_the_opt_in(tmp_path, tiny_dirs, settings):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["llama"], pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    wb = Workbench(settings)
    try:
        with pytest.raises(ModelLoadError, match="LAYERLENS_ALLOW_PICKLE=1") as caught:
            wb.model(str(pickled))
        assert "\n" not in str(caught.value)
    finally:
        wb.close()
    opted = Workbench(Settings(**{**settings.__dict__, "allow_pickle": True}))
    try:
        loaded = opted.model(str(pickled))
        reference = opted.model(str(tiny_dirs["llama"]))
        ids = torch.tensor([[5, 6, 7]])
        torch.testing.assert_close(loaded.hf_model(ids).logits, reference.hf_model(ids).logits, rtol=0, atol=0)
    finally:
        opted.close()


def test_loading_never_trusts_remote_code_and_asks_for_safetensors(tiny_dirs, settings, monkeypatch):
    import nnsight

    seen = {}

    class Refused(Exception):
        pass

    def recording(path, **kwargs):
        seen.update(kwargs)
        raise Refused

    monkeypatch.setattr(nnsight, "TransformersModel", recording)
    wb = Workbench(settings)
    try:
        with pytest.raises(ModelLoadError):
            wb.model(str(tiny_dirs["gpt2"]))
    finally:
        wb.close()
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_a_config_that_asks_for_remote_code_does_not_run_it(tmp_path, tiny_dirs, settings):
    evil = tmp_path / "evil"
    shutil.copytree(tiny_dirs["llama"], evil)
    marker = tmp_path / "remote-code-ran"
    (evil / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaForCausalLM as EvilForCausalLM\n"
        "from transformers import LlamaConfig as EvilConfig\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(config))
    wb = Workbench(settings)
    try:
        model = wb.model(str(evil))  # the built-in Llama code, never the directory's own
        assert type(model.hf_model).__module__ == "transformers.models.llama.modeling_llama"
    finally:
        wb.close()
    assert not marker.exists()


# ------------------------------------------------------------------ names


def test_results_and_titles_name_the_model_not_its_path(workbench, tiny_dirs):
    path = str(tiny_dirs["llama"])
    result = workbench.logit_lens(path, LogitLensRequest(PROMPT, top_k=3))
    assert result.model_name == "llama"
    assert workbench.model(path).name == "llama" and workbench.local_model(path).name == "llama"
    assert workbench.local_model("smollm2-135m").name == "smollm2-135m"
    for figure in LOGIT_LENS.figures:
        layout = LOGIT_LENS.figure(figure, result).to_dict()["layout"]
        assert path not in json.dumps(layout) and "llama" in layout["title"]["text"]
    # the cache (keyed by digest) lists the model by its identity for `python -m workbench cache`, run
    # by whoever owns the server: the resolved directory, so two directories called llama stay apart
    cursor = workbench.store._con.cursor()
    assert cursor.execute("SELECT DISTINCT model_name FROM results").fetchall() == [(str(Path(path).resolve()),)]
    assert workbench.local_model(path).identity == str(Path(path).resolve())


def test_two_directories_with_the_same_last_name_stay_two_models(workbench, tiny_dirs, tmp_path):
    other = build_model_dir("gpt2", tmp_path / "elsewhere" / "llama", seed=5)  # a gpt2 called llama
    a, b = workbench.model(str(tiny_dirs["llama"])), workbench.model(str(other))
    assert a.name == b.name == "llama"
    assert a is not b and a.digest != b.digest and a.info.model_type == "llama" and b.info.model_type == "gpt2"


def test_bundles_show_the_short_name_in_their_figures(workbench, tiny_dirs):
    bundle = lens_bundle(workbench, str(tiny_dirs["llama"]))
    assert str(tiny_dirs["llama"]).encode() not in bundle.files["figure.json"]
    assert str(tiny_dirs["llama"]).encode() not in bundle.files["data.csv"]
