"""Shared fixtures: tiny model directories, a Workbench on a throwaway cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.tiny_models import ARCHITECTURES, build_model_dir  # noqa: E402
from workbench.config import PROJECT_ROOT, Settings  # noqa: E402
from workbench.service import Workbench  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_model_dir(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(params=ARCHITECTURES)
def tiny_dir(request, tiny_dirs) -> Path:
    return tiny_dirs[request.param]


@pytest.fixture
def settings(tmp_path) -> Settings:
    """A throwaway cache; converted real models are shared with the app's cache/models."""
    return Settings(cache_dir=tmp_path / "cache", models_dir_override=PROJECT_ROOT / "cache" / "models")


@pytest.fixture
def workbench(settings):
    wb = Workbench(settings)
    yield wb
    wb.close()


from tests.page_helpers import app  # noqa: E402, F401  (the AppTest fixture, for every page test)
