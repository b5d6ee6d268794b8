"""The adapter's architecture table: residual topology, config fields read by role, and the hub rule
applied at load time (no environment changes at import).

Configs are built with transformers' config classes (no download, no weights).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants as hub_constants
from transformers import (
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PhiConfig,
    Qwen2Config,
    Qwen3Config,
)

from tests.tiny_models import ARCHITECTURES as TINY_ARCHITECTURES
from tests.tiny_models import build_config, build_tokenizer
from workbench.config import PROJECT_ROOT, Settings
from workbench.errors import ModelLoadError, UnsupportedArchitecture
from workbench.models import adapter, catalog, loader
from workbench.models.loader import ModelInfo

SIZES = ("d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_positions", "tied_embeddings")


def _gemma3_270m_text(**extra) -> Gemma3TextConfig:
    """Gemma 3 270M's sizes (catalog model gemma3-270m)."""
    return Gemma3TextConfig(
        hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        vocab_size=262144, max_position_embeddings=32768, intermediate_size=2048, **extra,
    )


# model_type -> (config, expected value of every role). SmolLM2 and Gemma 3 270M carry the catalog
# models' real sizes; the others are small made-up sizes, each role a distinct number.
CASES = {
    "llama": (  # SmolLM2-135M (catalog model smollm2-135m)
        LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    vocab_size=49152, max_position_embeddings=8192, intermediate_size=1536, tie_word_embeddings=True),
        dict(d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, max_positions=8192,
             tied_embeddings=True),
    ),
    "gemma3_text": (
        _gemma3_270m_text(final_logit_softcapping=None),
        dict(d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, vocab_size=262144, max_positions=32768,
             tied_embeddings=True),
    ),
    "gemma3": (  # multimodal: the sizes live in config.text_config
        Gemma3Config(text_config=_gemma3_270m_text().to_dict()),
        dict(d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, vocab_size=262144, max_positions=32768,
             tied_embeddings=True),
    ),
    "gpt2": (
        GPT2Config(n_embd=96, n_layer=5, n_head=6, n_positions=256, vocab_size=777, tie_word_embeddings=True),
        dict(d_model=96, n_layers=5, n_heads=6, n_kv_heads=6, vocab_size=777, max_positions=256,
             tied_embeddings=True),
    ),
    "qwen2": (
        Qwen2Config(hidden_size=80, num_hidden_layers=7, num_attention_heads=10, num_key_value_heads=5,
                    vocab_size=555, max_position_embeddings=640, tie_word_embeddings=False),
        dict(d_model=80, n_layers=7, n_heads=10, n_kv_heads=5, vocab_size=555, max_positions=640,
             tied_embeddings=False),
    ),
    "qwen3": (
        Qwen3Config(hidden_size=72, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                    vocab_size=333, max_position_embeddings=320, tie_word_embeddings=True),
        dict(d_model=72, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=333, max_positions=320,
             tied_embeddings=True),
    ),
    "mistral": (
        MistralConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                      vocab_size=444, max_position_embeddings=160, tie_word_embeddings=False),
        dict(d_model=48, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=444, max_positions=160,
             tied_embeddings=False),
    ),
    "gemma2": (
        Gemma2Config(hidden_size=56, num_hidden_layers=3, num_attention_heads=7, num_key_value_heads=1,
                     vocab_size=222, max_position_embeddings=96, tie_word_embeddings=True),
        dict(d_model=56, n_layers=3, n_heads=7, n_kv_heads=1, vocab_size=222, max_positions=96,
             tied_embeddings=True),
    ),
    "olmo2": (
        Olmo2Config(hidden_size=40, num_hidden_layers=5, num_attention_heads=5, num_key_value_heads=5,
                    vocab_size=211, max_position_embeddings=112, pad_token_id=0, tie_word_embeddings=False),
        dict(d_model=40, n_layers=5, n_heads=5, n_kv_heads=5, vocab_size=211, max_positions=112,
             tied_embeddings=False),
    ),
    "phi3": (
        Phi3Config(hidden_size=36, num_hidden_layers=6, num_attention_heads=3, num_key_value_heads=1,
                   vocab_size=199, max_position_embeddings=144, pad_token_id=0, tie_word_embeddings=False),
        dict(d_model=36, n_layers=6, n_heads=3, n_kv_heads=1, vocab_size=199, max_positions=144,
             tied_embeddings=False),
    ),
    "gpt_neox": (  # Pythia-70m's sizes
        GPTNeoXConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, vocab_size=50304,
                      max_position_embeddings=2048, tie_word_embeddings=False),
        dict(d_model=512, n_layers=6, n_heads=8, n_kv_heads=8, vocab_size=50304, max_positions=2048,
             tied_embeddings=False),
    ),
    "phi": (
        PhiConfig(hidden_size=88, num_hidden_layers=4, num_attention_heads=11, vocab_size=301,
                  max_position_embeddings=272, tie_word_embeddings=False),
        dict(d_model=88, n_layers=4, n_heads=11, n_kv_heads=11, vocab_size=301, max_positions=272,
             tied_embeddings=False),
    ),
    "gptj": (
        GPTJConfig(n_embd=112, n_layer=3, n_head=14, vocab_size=287, n_positions=352, tie_word_embeddings=False),
        dict(d_model=112, n_layers=3, n_heads=14, n_kv_heads=14, vocab_size=287, max_positions=352,
             tied_embeddings=False),
    ),
}


def test_every_supported_model_type_has_a_case():
    assert sorted(CASES) == adapter.supported_model_types()


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_spec_reads_sizes_by_role(model_type):
    config, expected = CASES[model_type]
    assert config.model_type == model_type
    spec = adapter.spec_for_model_type(model_type)
    assert {role: adapter.config_value(spec, config, role) for role in SIZES} == expected
    assert set(SIZES) == set(adapter.CONFIG_ROLES)


# ---------------------------------------------------------------------- identical ModelInfo


# What loader._model_info gave for the tiny test models before the aliases moved into the adapter.
TINY_INFO = {
    "gpt2": ModelInfo("gpt2", "gpt2", 3, 64, 4, 4, 368, 128, None),
    "llama": ModelInfo("llama", "llama", 3, 64, 4, 2, 368, 128, None),
    "qwen2": ModelInfo("qwen2", "llama", 3, 64, 4, 2, 368, 128, None),
    "gemma3_text": ModelInfo("gemma3_text", "gemma3", 3, 64, 4, 1, 368, 128, 30.0),
}


def _info_before(config, spec, n_layers) -> ModelInfo:
    """loader._model_info as it was, with the config names spelled out in the loader."""
    text = getattr(config, "text_config", None) or config
    n_heads = getattr(text, "num_attention_heads", None) or text.n_head
    return ModelInfo(
        model_type=config.model_type,
        family=spec.family,
        n_layers=n_layers,
        d_model=getattr(text, "hidden_size", None) or text.n_embd,
        n_heads=n_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
        vocab_size=text.vocab_size,
        max_positions=getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None),
        logit_softcap=adapter.logit_softcap(spec, config),
    )


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tiny_model_info_is_unchanged(arch):
    config = build_config(arch, len(build_tokenizer()))
    spec = adapter.spec_for_model_type(config.model_type)
    info = loader._model_info(config, spec, 3)
    assert info == TINY_INFO[arch] == _info_before(config, spec, 3)
    tied_before = getattr(getattr(config, "text_config", None) or config, "tie_word_embeddings", False)
    assert adapter.config_value(spec, config, "tied_embeddings") == tied_before


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_model_info_equals_the_old_aliases(model_type):
    config, expected = CASES[model_type]
    spec = adapter.spec_for_model_type(model_type)
    info = loader._model_info(config, spec, expected["n_layers"])
    assert info == _info_before(config, spec, expected["n_layers"])


def test_loaded_model_info_is_unchanged(workbench, tiny_dirs):
    model = workbench.model(str(tiny_dirs["gpt2"]))
    assert model.info == TINY_INFO["gpt2"]


# ---------------------------------------------------------------------- residual topology


PARALLEL_FAMILIES = {"gpt_neox", "phi", "gptj"}  # attention and MLP both read the block input


def test_every_row_declares_a_known_topology():
    for spec in adapter.ARCHITECTURES:
        assert spec.residual in adapter.RESIDUAL_TOPOLOGIES
        assert spec.parallel == (spec.family in PARALLEL_FAMILIES) != spec.sequential
        if spec.parallel:
            assert "pre_mlp_norm" not in spec.rename_table().values()
            with pytest.raises(UnsupportedArchitecture, match=f"'{spec.family}'"):
                spec.require_sequential("this")
        else:
            spec.require_sequential("this")  # no error
            if spec.pre_mlp_norm is not None:  # OLMo 2: no norm before the MLP, resid_mid is its input
                assert spec.rename_table()[spec.pre_mlp_norm] == "pre_mlp_norm"
    assert adapter.spec_for_model_type("olmo2").pre_mlp_norm is None


@pytest.mark.parametrize("value", ["parellel", "Sequential", "", None])
def test_unknown_topology_is_refused(value):
    spec = adapter.spec_for_model_type("llama")
    with pytest.raises(UnsupportedArchitecture, match=r"residual=.*must be one of 'sequential', 'parallel'"):
        dataclasses.replace(spec, residual=value)


def test_parallel_spec_has_no_resid_mid():
    spec = dataclasses.replace(adapter.spec_for_model_type("gpt2"), family="neox-like", residual="parallel")
    assert spec.parallel and not spec.sequential
    assert "pre_mlp_norm" not in spec.rename_table().values()  # reading it as resid_mid fails loudly
    assert f"norm:{spec.pre_mlp_norm}" in spec.required_paths()  # the norm itself is still validated
    with pytest.raises(UnsupportedArchitecture, match=r"Sublayer split needs .*resid_mid.*'neox-like'.*parallel"):
        spec.require_sequential("Sublayer split")


def test_spec_rows_name_every_required_role():
    spec = adapter.spec_for_model_type("llama")
    names = dict(spec.config_names)
    with pytest.raises(UnsupportedArchitecture, match="unknown config roles hidden"):
        dataclasses.replace(spec, config_names={**names, "hidden": ("hidden_size",)})
    del names["vocab_size"]
    with pytest.raises(UnsupportedArchitecture, match="no config field names for vocab_size"):
        dataclasses.replace(spec, config_names=names)
    # optional roles may name nothing
    spec = dataclasses.replace(spec, config_names={**names, "vocab_size": ("vocab_size",), "n_kv_heads": ()})
    assert adapter.config_value(spec, LlamaConfig(num_attention_heads=8, num_key_value_heads=2), "n_kv_heads") == 8


def test_specs_stay_hashable_and_comparable():
    for spec in adapter.ARCHITECTURES:
        assert hash(spec) == hash(dataclasses.replace(spec))
        assert spec == dataclasses.replace(spec)


# ---------------------------------------------------------------------- missing config fields


def test_missing_field_names_it_and_the_file():
    config = SimpleNamespace(model_type="llama", num_attention_heads=4, vocab_size=10)
    spec = adapter.spec_for_model_type("llama")
    expected = (r"'llama' config has no hidden_size \(config\), which the 'llama' family reads for d_model "
                r".*config_names\['d_model'\].*workbench/models/adapter\.py")
    with pytest.raises(UnsupportedArchitecture, match=expected):
        adapter.config_value(spec, config, "d_model")
    with pytest.raises(UnsupportedArchitecture, match=expected):
        loader._model_info(config, spec, 3)


def test_missing_field_in_a_real_config_under_another_spec():
    """A Llama config read with GPT-2's names: GPT-2's field is named, optional roles fall back."""
    gpt2 = adapter.spec_for_model_type("gpt2")
    config = LlamaConfig(hidden_size=64, num_attention_heads=4)
    with pytest.raises(UnsupportedArchitecture, match=r"no n_embd \(config\).*'gpt2' family reads for d_model"):
        adapter.config_value(gpt2, config, "d_model")
    assert adapter.config_value(gpt2, config, "max_positions") is None  # optional: no n_positions here
    with pytest.raises(UnsupportedArchitecture, match=r"no n_head \(config\).*reads for n_heads"):
        adapter.config_value(gpt2, config, "n_kv_heads")  # falls back to n_heads, which is required


def test_missing_field_in_the_text_section_says_so():
    config = SimpleNamespace(model_type="gemma3", text_config=SimpleNamespace(num_attention_heads=4, vocab_size=9))
    with pytest.raises(UnsupportedArchitecture, match=r"no hidden_size \(config.text_config\)"):
        adapter.config_value(adapter.spec_for_model_type("gemma3"), config, "d_model")


def test_optional_roles_fall_back():
    config = SimpleNamespace(model_type="llama", hidden_size=8, num_attention_heads=2, vocab_size=5)
    spec = adapter.spec_for_model_type("llama")
    assert adapter.config_value(spec, config, "n_kv_heads") == 2
    assert adapter.config_value(spec, config, "max_positions") is None
    assert adapter.config_value(spec, config, "tied_embeddings") is False


def test_unknown_role_is_a_programming_error():
    with pytest.raises(ValueError, match="Unknown config role 'width'"):
        adapter.config_value(adapter.spec_for_model_type("llama"), LlamaConfig(), "width")


# ---------------------------------------------------------------------- the hub rule, at load time


def test_importing_the_loader_leaves_the_environment_alone():
    hub_switches = ("HF_HUB_OFFLINE", "LAYERLENS_REMOTE", "LAYERLENS_ALLOW_HUB")
    env = {k: v for k, v in os.environ.items() if k not in hub_switches}
    code = (
        "import os; before = dict(os.environ)\n"
        "import workbench.models.loader, workbench.models.catalog, workbench.remote, workbench.service\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "print(changed)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=str(PROJECT_ROOT)).stdout.strip()
    assert out == "[]"


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub as it is without HF_HUB_OFFLINE (the tests' conftest sets it), no network:
    any connection attempt is recorded and refused."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("allow_hub, remote, offline", [(False, False, True), (True, False, False),
                                                         (False, True, False)])
def test_load_and_materialize_are_offline_unless_allowed(tiny_dirs, hub_online, monkeypatch, allow_hub, remote,
                                                         offline):
    settings = Settings(allow_hub=allow_hub, remote=remote)
    assert settings.hub_allowed is not offline
    seen = {}

    def recording(step, real):
        def call(arg):
            seen[step] = hub_constants.HF_HUB_OFFLINE  # the switch while the real step runs
            return real(arg)
        return call

    monkeypatch.setattr(loader, "_read_config", recording("load", loader._read_config))
    monkeypatch.setattr(catalog, "directory_digest", recording("materialize", catalog.directory_digest))
    model = loader.load(catalog.materialize(catalog.resolve(str(tiny_dirs["llama"])), settings), settings)
    assert seen == {"materialize": offline, "load": offline}
    assert model.info == TINY_INFO["llama"]
    assert hub_constants.HF_HUB_OFFLINE is False  # put back after the load
    assert hub_online == []


def test_missing_relative_path_is_no_hub_lookup(hub_online):
    """A model path that does not exist, spelled like a hub id, fails at once without a connection."""
    missing = catalog.LocalModel(name="gone", path=Path("some-org/not-a-local-dir"), digest="0" * 64)
    with pytest.raises(ModelLoadError, match="Could not read the config of some-org/not-a-local-dir"):
        loader.load(missing, Settings())
    assert hub_online == []
    assert hub_constants.HF_HUB_OFFLINE is False


def test_hub_guard_nests_and_restores(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with catalog.hub_guard(Settings()):
        with catalog.hub_guard(Settings()):
            assert hub_constants.HF_HUB_OFFLINE is True
        assert hub_constants.HF_HUB_OFFLINE is True  # the outer guard is still open
        with catalog.hub_guard(Settings(allow_hub=True)):
            assert hub_constants.HF_HUB_OFFLINE is True  # offline wins while a guard is open
    assert hub_constants.HF_HUB_OFFLINE is False
    with pytest.raises(RuntimeError), catalog.hub_guard(Settings()):
        raise RuntimeError("load failed")
    assert hub_constants.HF_HUB_OFFLINE is False
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # the user's own HF_HUB_OFFLINE=1 is kept
    with catalog.hub_guard(Settings(allow_hub=True)):
        assert hub_constants.HF_HUB_OFFLINE is True
    with catalog.hub_guard(Settings()):
        pass
    assert hub_constants.HF_HUB_OFFLINE is True
