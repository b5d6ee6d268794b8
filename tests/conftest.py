"""Shared fixtures: tiny model directories, a Workbench on a throwaway cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.tiny_models import ARCHITECTURES, SEQ2SEQ_ARCHITECTURES, build_model_dir, build_seq2seq_dir  # noqa: E402
from workbench.config import PROJECT_ROOT, Settings  # noqa: E402
from workbench.service import Workbench  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Where the tiny models live: a model root (LAYERLENS_MODEL_ROOTS) for every test, so shared
    links and bundles may name them; any other temporary directory is outside the roots."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session", autouse=True)
def model_roots(tiny_root) -> Iterator[tuple[Path, ...]]:
    """The models cache and the tiny models as the model roots, for the app, the CLI and servers."""
    roots = (PROJECT_ROOT / "cache" / "models", tiny_root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAYERLENS_MODEL_ROOTS", os.pathsep.join(map(str, roots)))
        yield roots


@pytest.fixture(scope="session")
def tiny_dirs(tiny_root) -> dict[str, Path]:
    return {arch: build_model_dir(arch, tiny_root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def arch_dirs(tiny_root):
    """arch -> a tiny model directory of any architecture of tests/tiny_models.py, built on first use."""
    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = build_model_dir(arch, tiny_root / f"arch-{arch}")
        return built[arch]

    return get


@pytest.fixture(scope="session")
def seq2seq_dirs(tiny_root) -> dict[str, str]:
    """Tiny random encoder-decoder models (T5, BART), under the model roots."""
    return {arch: str(build_seq2seq_dir(arch, tiny_root / f"seq2seq-{arch}")) for arch in SEQ2SEQ_ARCHITECTURES}


def model_for(analysis, tiny_dirs, seq2seq_dirs) -> str:
    """The tiny model an analysis-wide test runs ``analysis`` on: T5 for an encoder-decoder analysis."""
    return seq2seq_dirs["t5"] if analysis.encoder_decoder else str(tiny_dirs["llama"])


@pytest.fixture(params=ARCHITECTURES)
def tiny_dir(request, tiny_dirs) -> Path:
    return tiny_dirs[request.param]


@pytest.fixture
def settings(tmp_path, model_roots) -> Settings:
    """A throwaway cache; converted real models are shared with the app's cache/models."""
    return Settings(cache_dir=tmp_path / "cache", models_dir_override=PROJECT_ROOT / "cache" / "models",
                    model_roots=model_roots)


@pytest.fixture
def workbench(settings):
    wb = Workbench(settings)
    yield wb
    wb.close()


from tests.page_helpers import app  # noqa: E402, F401  (the AppTest fixture, for every page test)
