"""Bad input gets the project's own errors, with messages that say what to do."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from workbench import prompts
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import PROJECT_ROOT, Settings
from workbench.errors import (
    BadAnswer,
    BadPrompt,
    BadRequest,
    UnknownModel,
    UnsupportedArchitecture,
    WorkbenchError,
)
from workbench.models import adapter, catalog


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(workbench, tiny_dirs, prompt):
    with pytest.raises(BadPrompt, match="empty"):
        workbench.logit_lens(str(tiny_dirs["gpt2"]), LogitLensRequest(prompt))


def test_over_long_prompt_in_tokens(workbench, tiny_dirs):
    long_prompt = "one two three " * 200
    with pytest.raises(BadPrompt, match=r"tokens long; the limit .* is 128 tokens"):
        workbench.logit_lens(str(tiny_dirs["gpt2"]), LogitLensRequest(long_prompt))


def test_over_long_prompt_in_characters(workbench, tiny_dirs):
    with pytest.raises(BadPrompt, match="characters; the limit"):
        workbench.logit_lens(str(tiny_dirs["gpt2"]), LogitLensRequest("a" * 10_000))


def test_binary_prompt(workbench, tiny_dirs):
    with pytest.raises(BadPrompt, match="control or binary"):
        workbench.logit_lens(str(tiny_dirs["gpt2"]), LogitLensRequest("abc\x00\x01def"))


def test_multi_token_target(workbench, tiny_dirs):
    with pytest.raises(BadAnswer, match="not one"):
        workbench.logit_lens(str(tiny_dirs["llama"]), LogitLensRequest("The capital", target=" Parisxyz"))


def test_top_k_out_of_range():
    with pytest.raises(BadRequest, match="top_k"):
        LogitLensRequest("x", top_k=0)


@pytest.mark.parametrize("name", ["", "no-such-model", "a/b/c"])
def test_unknown_model_names(workbench, name):
    with pytest.raises(UnknownModel):
        workbench.logit_lens(name, LogitLensRequest("hello"))


def test_directory_without_config(workbench, tmp_path):
    with pytest.raises(UnknownModel, match="no config.json"):
        workbench.logit_lens(str(tmp_path), LogitLensRequest("hello"))


def test_hub_id_offline_fails_fast(workbench):
    with pytest.raises(UnknownModel, match="hub downloads are off"):
        workbench.logit_lens("some-org/some-model-that-is-not-cached", LogitLensRequest("hello"))


def test_unsupported_architecture_names_it(workbench, tmp_path):
    # a model type transformers knows but the adapter has no row for (GPT-NeoX, the example before, has one now)
    config = {"model_type": "mamba", "architectures": ["MambaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="'mamba' is not supported.*llama.*workbench/models/adapter.py"):
        workbench.model(str(tmp_path))


def test_incomplete_spec_names_missing_modules(tiny_dirs, workbench):
    model = workbench.model(str(tiny_dirs["llama"]))
    broken = adapter.ArchitectureSpec(**{**model.spec.__dict__, "mlp_gate": "no_such_proj", "final_norm": "model.nope"})
    expected = r"final_norm \(model.nope\), mlp_gate \(model.layers.0.mlp.no_such_proj\)"
    with pytest.raises(UnsupportedArchitecture, match=expected):
        adapter.validate(broken, model.hf_model, "llama")


def test_missing_model_package_is_explained(tmp_path):
    entry = catalog.CatalogEntry("ghost", "ghost", catalog.BundledGGUF("no_such_package_xyz", "x.gguf"))
    with pytest.raises(WorkbenchError, match="not installed"):
        catalog.materialize(entry, Settings(cache_dir=tmp_path))


@hsettings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_accepted_or_rejected_cleanly(text):
    try:
        assert prompts.check_text(text, Settings()) == text
    except BadPrompt as exc:
        assert str(exc)


@pytest.mark.parametrize("allow, expected", [("0", "1"), ("1", None)])
def test_hub_downloads_are_offline_unless_allowed(allow, expected):
    """Loading a model keeps the hub offline, except when LAYERLENS_ALLOW_HUB=1 asks for downloads.

    The rule is applied from the settings while a model is materialised or loaded (catalog.hub_guard),
    not by changing the environment when the workbench is imported."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LAYERLENS_REMOTE")}
    env["LAYERLENS_ALLOW_HUB"] = allow
    code = (
        "import os; before = dict(os.environ)\n"
        "import workbench.models.loader\n"
        "from huggingface_hub import constants\n"
        "from workbench.config import load_settings\n"
        "from workbench.models.catalog import hub_guard\n"
        "assert dict(os.environ) == before, 'importing the loader changed the environment'\n"
        "with hub_guard(load_settings()): print('1' if constants.HF_HUB_OFFLINE else None)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=str(PROJECT_ROOT)).stdout.strip()
    assert out == str(expected)
