"""The DuckDB store: exact round trips, cache hits, locked and corrupt files."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pytest

from workbench import tracing
from workbench.analyses import request_digest
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.errors import CacheError, CacheLocked
from workbench.store import ActivationKey, ResultKey, Store
from workbench.store.codec import same_result

PROMPT = "The capital of France is"


def test_activation_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((4, 7, 96)).astype(np.float32)
    acts[0, 0, :3] = [np.float32(1e-38), np.float32(-0.0), np.float32(3.4e38)]
    key = ActivationKey("model", "input", "resid")
    with Store(tmp_path / "a.duckdb") as store:
        assert store.get_activations(key) is None
        store.put_activations(key, acts)
        store.put_activations(ActivationKey("model", "other", "resid"), acts[:, :3] + 1)
        back = store.get_activations(key)
    assert back.dtype == np.float32 and back.shape == acts.shape
    assert back.tobytes() == acts.tobytes()
    with Store(tmp_path / "a.duckdb") as store:  # survives a reopen
        assert store.get_activations(key).tobytes() == acts.tobytes()


def test_rewriting_a_key_replaces_it(tmp_path):
    key = ActivationKey("m", "i", "resid")
    with Store(tmp_path / "a.duckdb") as store:
        store.put_activations(key, np.zeros((2, 3, 8), np.float32))
        store.put_activations(key, np.ones((2, 3, 8), np.float32))
        assert (store.get_activations(key) == 1).all()


def test_result_round_trip_is_exact(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])
    request = LogitLensRequest(PROMPT, target=" Paris")
    result = workbench.logit_lens(name, request)
    key = ResultKey("test", 1, "digest", request_digest(request))
    workbench.store.put_result(key, result, model_name=name, request_json="{}")
    back = workbench.store.get_result(key, type(result))
    assert back is not result and same_result(back, result)
    assert back.top_tokens.tolist() == result.top_tokens.tolist()


def test_cached_result_equals_recomputed_and_skips_the_model(workbench, tiny_dirs, monkeypatch, settings):
    name = str(tiny_dirs["gpt2"])
    request = LogitLensRequest(PROMPT, target=" Paris")
    first = workbench.logit_lens(name, request)
    assert workbench.store.count_results("logit_lens") == 1

    traces = []
    real_trace = tracing.residual_stream
    monkeypatch.setattr(tracing, "residual_stream", lambda *a: traces.append(a) or real_trace(*a))
    cached = workbench.logit_lens(name, request)
    assert traces == [] and same_result(cached, first)

    # A fresh process-level backend on the same cache: the hit needs no model load at all.
    workbench.close()
    from workbench.service import Workbench

    again = Workbench(settings)
    monkeypatch.setattr(again.runtime.pool, "load", lambda *a, **k: pytest.fail("a cache hit must not load the model"))
    assert same_result(again.logit_lens(name, request), first)
    again.close()

    # Recomputed from scratch (empty store) gives the same numbers.
    fresh = Workbench(settings.with_cache_dir(settings.cache_dir.parent / "fresh"))
    recomputed = fresh.logit_lens(name, request)
    fresh.close()
    assert same_result(recomputed, first)


def test_new_target_reuses_stored_activations(workbench, tiny_dirs, monkeypatch):
    name = str(tiny_dirs["llama"])
    workbench.logit_lens(name, LogitLensRequest(PROMPT, target=" Paris"))
    monkeypatch.setattr(tracing, "residual_stream", lambda *a: pytest.fail("activations should come from the store"))
    result = workbench.logit_lens(name, LogitLensRequest(PROMPT, target=" Rome"))
    assert result.target_token == " Rome" and workbench.store.count_results() == 2


def test_same_result_compares_scalars_as_stored():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Scalars:
        value: float
        values: list

    nan = float("nan")  # e.g. a gate cosine of a model whose MLP has no gate
    assert same_result(Scalars(nan, [nan, 1.0]), Scalars(float("nan"), [float("nan"), 1.0]))  # stored alike
    assert not same_result(Scalars(0.0, []), Scalars(-0.0, []))
    assert not same_result(Scalars(1, []), Scalars(1.0, []))
    assert not same_result(Scalars(nan, [1.0]), Scalars(nan, [1.0 + 1e-16 * 3]))


def test_keys_change_with_model_request_and_version():
    base = ResultKey("logit_lens", 1, "m", "r")
    assert len({base.id, ResultKey("logit_lens", 2, "m", "r").id, ResultKey("logit_lens", 1, "m2", "r").id,
                ResultKey("logit_lens", 1, "m", "r2").id}) == 4
    assert request_digest(LogitLensRequest("a", " b")) != request_digest(LogitLensRequest("a", " c"))
    assert request_digest(LogitLensRequest("a", " b")) == request_digest(LogitLensRequest("a", " b"))


def test_second_process_gets_a_clear_locked_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    hold = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('ready', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CacheLocked, match="second workbench server"):
            Store(path)
    finally:
        holder.kill()
        holder.wait()


def test_corrupt_cache_file_is_reported_not_deleted(tmp_path):
    path = tmp_path / "corrupt.duckdb"
    garbage = b"this is not a duckdb file" * 1000
    path.write_bytes(garbage)
    with pytest.raises(CacheError, match="move it aside"):
        Store(path)
    assert path.read_bytes() == garbage  # nothing lost


def test_schema_version_mismatch_is_reported(tmp_path):
    path = tmp_path / "old.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE store_meta SET value = '0' WHERE name = 'schema_version'")
    con.close()
    with pytest.raises(CacheError, match="schema version 0"):
        Store(path)


def test_threads_share_one_store(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with Store(tmp_path / "t.duckdb") as store:
        def work(i):
            acts = np.full((2, 3, 16), i, np.float32)
            key = ActivationKey("m", str(i), "resid")
            store.put_activations(key, acts)
            return float(store.get_activations(key)[0, 0, 0])

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(work, range(12))) == [float(i) for i in range(12)]
