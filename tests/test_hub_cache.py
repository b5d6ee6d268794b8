"""Hub ids resolve through the local HuggingFace cache: a directory laid out as the hub cache
(``models--org--name/snapshots/<commit>/`` with ``refs/main``) opens by its hub id with downloads
off, and gives the same numbers as the same files opened by path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.errors import WorkbenchError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, tiny_dirs, monkeypatch):
    """The tiny Llama as ``test-org/tiny-llama`` in a fresh hub cache (offline, as the workbench runs)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--test-org--tiny-llama"
    shutil.copytree(tiny_dirs["llama"], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_in_the_local_cache_opens_without_downloads(workbench, hub_cache, tiny_dirs):
    assert not workbench.settings.allow_hub
    request = LogitLensRequest("The capital of France is", " Paris")
    by_id = workbench.run(logit_lens.ANALYSIS, "test-org/tiny-llama", request)
    by_path = workbench.run(logit_lens.ANALYSIS, str(tiny_dirs["llama"]), request)
    assert by_id.model_name == "test-org/tiny-llama"  # shown by its hub id, not the snapshot path
    np.testing.assert_array_equal(by_id.kl_to_final, by_path.kl_to_final)
    np.testing.assert_array_equal(by_id.top_ids, by_path.top_ids)


def test_a_hub_id_missing_from_the_cache_names_the_switch(workbench, hub_cache):
    with pytest.raises(WorkbenchError, match="LAYERLENS_ALLOW_HUB=1"):
        workbench.run(logit_lens.ANALYSIS, "test-org/not-cached", LogitLensRequest("Hello"))
