"""Cache keys, the size limit with LRU eviction, and the ``cache`` command (info / clear / rebuild)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace

import numpy as np
import pytest

from tests.tiny_models import build_model_dir
from workbench import cli
from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import load_settings
from workbench.service import Workbench
from workbench.store import ActivationKey, ResultKey, Store
from workbench.store.codec import same_result

PROMPT = "The capital of France is"


@dataclass(frozen=True, eq=False)
class Payload:
    values: np.ndarray
    index: int


def payload(index: int, n_floats: int = 2500) -> Payload:
    return Payload(np.random.default_rng(index).standard_normal(n_floats), index)


def key(index: int) -> ResultKey:
    return ResultKey("payload", 1, "model", f"request-{index}")


# --------------------------------------------------------------------------- keys


@pytest.fixture
def counted_compute(monkeypatch) -> list:
    """Every call of the logit lens's compute, recorded."""
    calls, real = [], logit_lens.compute
    monkeypatch.setattr(logit_lens, "compute", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_model_request_and_code_version_each_change_the_key(workbench, tiny_dirs, tmp_path, counted_compute,
                                                            monkeypatch):
    name = str(tiny_dirs["llama"])
    request = LogitLensRequest(PROMPT, target=" Paris")
    first = workbench.logit_lens(name, request)
    assert len(counted_compute) == 1

    assert same_result(workbench.logit_lens(name, request), first) and len(counted_compute) == 1  # unchanged: hit
    copy = shutil.copytree(tiny_dirs["llama"], tmp_path / "same-weights-elsewhere")
    assert same_result(workbench.logit_lens(str(copy), request), first)  # the key is content, not path
    assert len(counted_compute) == 1

    workbench.logit_lens(name, LogitLensRequest(PROMPT, target=" Rome"))  # request changed
    assert len(counted_compute) == 2

    other = build_model_dir("llama", tmp_path / "retrained", seed=1)  # same architecture, other weights
    assert not same_result(workbench.logit_lens(str(other), request), first)
    assert len(counted_compute) == 3

    newer = dataclasses.replace(logit_lens.ANALYSIS, version=logit_lens.VERSION + 1)  # analysis code changed
    monkeypatch.setattr(logit_lens, "ANALYSIS", newer)
    assert same_result(workbench.logit_lens(name, request), first)  # recomputed; same numbers here
    assert len(counted_compute) == 4
    assert workbench.store.count_results("logit_lens") == 4
    assert workbench.logit_lens(name, request) is not None and len(counted_compute) == 4  # and now cached


# --------------------------------------------------------------------------- size limit


def test_over_the_limit_evicts_least_recently_used_first(tmp_path):
    entry = len(payload(0).values.tobytes())  # ~20 kB per result
    limit = int(5.5 * entry)  # five entries fit, the sixth needs two evicted to get under 90%
    path = tmp_path / "small.duckdb"
    with Store(path, max_bytes=limit) as store:
        for index in range(4):
            store.put_result(key(index), payload(index), model_name="m", request_json="{}")
        assert store.last_eviction is None
        assert store.get_result(key(0), Payload) is not None  # 0 is now the most recently used
        store.put_result(key(4), payload(4), model_name="m", request_json="{}")
        store.put_result(key(5), payload(5), model_name="m", request_json="{}")  # over the limit
        assert store.stored_bytes() <= 0.9 * limit
        evicted = set(store.last_eviction.result_ids)
        assert evicted == {key(1).id, key(2).id}  # the two least recently used; never 0, which was read
        for index in (0, 3, 4, 5):
            assert same_result(store.get_result(key(index), Payload), payload(index))
        assert store.get_result(key(1), Payload) is None and store.get_result(key(2), Payload) is None
        assert store.orphan_rows() == 0


def test_limit_holds_over_many_writes_of_results_and_activations(tmp_path):
    limit = 400_000
    path = tmp_path / "small.duckdb"
    acts = {i: np.full((2, 8, 64), i, np.float32) for i in range(40)}  # 4 kB each
    with Store(path, max_bytes=limit) as store:
        for index in range(40):
            store.put_result(key(index), payload(index, 5000), model_name="m", request_json="{}")
            store.put_activations(ActivationKey("model", f"input-{index}", "resid"), acts[index])
            store.get_result(key(0), Payload)  # kept hot: never evicted
            assert store.stored_bytes() <= limit
        survivors = [i for i in range(40) if store.get_result(key(i), Payload) is not None]
        assert 0 in survivors and 39 in survivors and 5 < len(survivors) < 40
        assert survivors[1:] == list(range(survivors[1], 40))  # the rest: the most recent ones, contiguous
        for index in survivors:
            assert same_result(store.get_result(key(index), Payload), payload(index, 5000))
        assert store.orphan_rows() == 0
    with Store(path, max_bytes=limit) as store:  # last-use times were written on close
        store.put_result(key(99), payload(99, 5000), model_name="m", request_json="{}")
        assert same_result(store.get_result(key(0), Payload), payload(0, 5000))


def test_no_limit_and_the_setting(tmp_path, monkeypatch, settings):
    with Store(tmp_path / "a.duckdb", max_bytes=None) as store:
        for index in range(5):
            store.put_result(key(index), payload(index), model_name="m", request_json="{}")
        assert store.count_results() == 5 and store.last_eviction is None
    monkeypatch.setenv("LAYERLENS_CACHE_MAX_MB", "0")
    assert load_settings().cache_max_bytes is None
    monkeypatch.setenv("LAYERLENS_CACHE_MAX_MB", "3")
    assert load_settings().cache_max_bytes == 3 * 1024 * 1024
    monkeypatch.delenv("LAYERLENS_CACHE_MAX_MB")
    assert load_settings().cache_max_mb == 2048
    backend = Workbench(replace(settings, cache_max_mb=1))
    assert backend.store.max_bytes == 1024 * 1024
    backend.close()


# --------------------------------------------------------------------------- the cache command


@pytest.fixture
def filled_cache(settings, tiny_dirs, monkeypatch):
    """Two tiny models' logit lenses, their prompt's residual streams and a depth-use result, in the settings'
    cache dir, which the CLI then finds through LAYERLENS_CACHE_DIR. Returns the results."""
    backend = Workbench(settings)
    llama, gpt2 = str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])
    results = {
        ("llama", "Paris"): backend.logit_lens(llama, LogitLensRequest(PROMPT, target=" Paris")),
        ("llama", "Rome"): backend.logit_lens(llama, LogitLensRequest(PROMPT, target=" Rome")),
        ("gpt2", "Paris"): backend.logit_lens(gpt2, LogitLensRequest(PROMPT, target=" Paris")),
    }
    from workbench import prompts, tracing
    from workbench.analyses.depth_use import DepthUseRequest
    from workbench.store.duckdb_store import ids_digest

    for name in (llama, gpt2):  # an activation set per model: the residual stream of the prompt
        model = backend.model(name)
        ids = prompts.encode(model, PROMPT, settings).ids
        backend.runtime.activations(model.digest, "resid", ids_digest(ids),
                                    lambda model=model, ids=ids: tracing.residual_stream(model, ids).resid.numpy())
    backend.depth_use(llama, DepthUseRequest(PROMPT))
    backend.close()
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(settings.cache_dir))
    return results


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["cache", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def table_row(text: str, first_cell: str) -> list[str]:
    rows = [line.split() for line in text.splitlines() if line.split()[:1] == [first_cell]]
    assert len(rows) == 1, f"{first_cell!r} not in\n{text}"
    return rows[0]


def test_info_lists_analyses_models_and_sites(filled_cache, capsys, tiny_dirs, settings):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert str(settings.database_path) in out and "schema 2" in out and "2048.0 MB limit" in out
    assert table_row(out, "logit_lens")[1] == "3" and table_row(out, "depth_use")[1] == "1"
    assert table_row(out, str(tiny_dirs["llama"]))[2:4] == ["3", "1"]  # 3 results, 1 activation set
    assert table_row(out, str(tiny_dirs["gpt2"]))[2:4] == ["1", "1"]
    assert table_row(out, "resid")[1] == "2"
    assert "belong to no entry" not in out


def test_clear_by_analysis_model_and_all(filled_cache, capsys, tiny_dirs, settings):
    code, out, _ = run_cli(capsys, "clear", "--analysis", "depth_use")
    assert code == 0 and out.startswith("Removed 1 result and 0 activation sets")

    code, out, _ = run_cli(capsys, "clear", "--model", str(tiny_dirs["llama"]))
    assert code == 0 and out.startswith("Removed 2 results and 1 activation set ")
    with Store(settings.database_path) as store:
        assert store.count_results() == 1
        groups = store.activation_groups()
        assert [(site, names) for site, _, names, _, _ in groups] == [("resid", str(tiny_dirs["gpt2"]))]
        gpt2_digest = groups[0][1]
    backend = Workbench(settings)  # what remains reads back exactly, without a model run
    backend.model = lambda *a, **k: pytest.fail("the gpt2 result should come from the cache")
    again = backend.logit_lens(str(tiny_dirs["gpt2"]), LogitLensRequest(PROMPT, target=" Paris"))
    backend.close()
    assert same_result(again, filled_cache[("gpt2", "Paris")])

    code, _, err = run_cli(capsys, "clear", "--model", "no-such-model")
    assert code == 2 and "No cached model is called 'no-such-model'" in err
    code, _, err = run_cli(capsys, "clear")
    assert code == 2 and "--all" in err

    code, out, _ = run_cli(capsys, "clear", "--model", gpt2_digest[:10])  # a digest prefix works too
    assert code == 0 and out.startswith("Removed 1 result and 1 activation set ")
    code, out, _ = run_cli(capsys, "clear", "--all")
    assert code == 0 and out.startswith("Removed 0 results and 0 activation sets")
    code, out, _ = run_cli(capsys, "info")
    assert "The cache is empty." in out


def test_clear_all_empties_everything(filled_cache, capsys, settings):
    code, out, _ = run_cli(capsys, "clear", "--all")
    assert code == 0 and out.startswith("Removed 4 results and 2 activation sets")
    with Store(settings.database_path) as store:
        assert store.count_results() == 0 and store.stored_bytes() == 0 and store.orphan_rows() == 0


def test_locked_cache_gives_the_clear_message_and_exit_2(filled_cache, capsys, settings):
    path = settings.database_path
    hold = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('ready', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for argv in (["info"], ["clear", "--all"], ["rebuild"]):
            code, out, err = run_cli(capsys, *argv)
            assert code == 2 and out == ""
            assert err.startswith("error: ") and "in use by another process, probably a second workbench server" in err
    finally:
        holder.kill()
        holder.wait()
    with Store(path) as store:
        assert store.count_results() == 4  # nothing was cleared or moved
    assert list(path.parent.glob("*.bak-*")) == []


def test_rebuild_moves_the_cache_aside_and_starts_empty(filled_cache, capsys, settings):
    code, out, _ = run_cli(capsys, "rebuild")
    backups = list(settings.cache_dir.glob("workbench.duckdb.bak-*"))
    assert code == 0 and len(backups) == 1 and str(backups[0]) in out
    with Store(backups[0]) as old, Store(settings.database_path) as new:
        assert old.count_results() == 4 and new.count_results() == 0
