"""Crashes and interruptions never leave partial entries: a writer SIGKILLed mid-write leaves a store
whose every indexed result and activation set reads back complete and exact, and an analysis that
raises (in its compute or in its progress callback) stores no result."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import duckdb
import numpy as np
import pytest

from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import PROJECT_ROOT
from workbench.store import ActivationKey, ResultKey, Store
from workbench.store.codec import same_result

WRITER_LIMIT = 12_000_000  # small enough that the writer also evicts while it may be killed


@dataclass(frozen=True, eq=False)
class Big:
    values: np.ndarray
    labels: np.ndarray
    index: int


def big_result(index: int) -> Big:
    rng = np.random.default_rng(index)
    return Big(rng.standard_normal(250_000 + 1000 * index), np.array([f"tok{index}-{i}" for i in range(50)]), index)


def big_activations(index: int) -> np.ndarray:
    return np.random.default_rng(10_000 + index).standard_normal((6, 40, 256)).astype(np.float32)


def result_key(index: int) -> ResultKey:
    return ResultKey("crash_test", 1, "model", f"request-{index}")


def activation_key(index: int) -> ActivationKey:
    return ActivationKey("model", f"input-{index}", "resid")


def write_forever(path: str, start: int) -> None:
    """The writer process: ~2 MB results and ~250 kB activation sets, reporting each committed write."""
    with Store(path, max_bytes=WRITER_LIMIT) as store:
        for index in range(start, start + 10_000):
            store.put_result(result_key(index), big_result(index), model_name="m", request_json="{}")
            print(f"result {index}", flush=True)
            store.put_activations(activation_key(index), big_activations(index))
            print(f"activations {index}", flush=True)


def kill_mid_write(path, start: int, after: int) -> tuple[int, int]:
    """Start a writer, SIGKILL it at a random moment after ``after`` reported writes; the last reported
    (committed) result and activation indices."""
    code = f"from tests.test_store_crash import write_forever; write_forever({str(path)!r}, {start})"
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    last = {"result": -1, "activations": -1}
    try:
        for _ in range(2 * after):
            kind, index = writer.stdout.readline().split()
            last[kind] = int(index)
        time.sleep(random.uniform(0.0, 0.08))  # lands inside a put or an eviction
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    return last["result"], last["activations"]


def indexed(path) -> tuple[list[int], list[int]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        results = [int(r.split("-")[1]) for (r,) in con.execute("SELECT request_digest FROM results").fetchall()]
        sets = [int(i.split("-")[1]) for (i,) in con.execute("SELECT input_digest FROM activation_sets").fetchall()]
    finally:
        con.close()
    return sorted(results), sorted(sets)


def test_kill_during_write_leaves_every_indexed_entry_complete(tmp_path):
    random.seed(0)
    path = tmp_path / "crash.duckdb"
    start = 0
    for round_ in range(2):  # the second writer reopens the crashed file and goes on
        last_result, last_activations = kill_mid_write(path, start, after=4 + round_)
        start = last_result + 1
        results, sets = indexed(path)
        assert last_result in results and last_activations in sets  # committed writes survive the kill
        with Store(path) as store:
            assert store.count_results() == len(results) and store.orphan_rows() == 0
            for index in results:
                assert same_result(store.get_result(result_key(index), Big), big_result(index)), index
            for index in sets:
                assert store.get_activations(activation_key(index)).tobytes() == big_activations(index).tobytes()
    assert len(results) >= 3
    with Store(path, max_bytes=WRITER_LIMIT) as store:  # killed before its eviction ran: opening evicts
        assert store.stored_bytes() <= WRITER_LIMIT and store.orphan_rows() == 0


# --------------------------------------------------------------------------- interrupted analyses


class Interrupted(Exception):
    pass


def test_compute_that_raises_stores_nothing(workbench, tiny_dirs, monkeypatch):
    name = str(tiny_dirs["llama"])
    request = LogitLensRequest("The capital of France is", target=" Paris")

    def fails_halfway(*args, **kwargs):
        raise Interrupted("the analysis broke halfway")

    monkeypatch.setattr(logit_lens, "compute", fails_halfway)
    with pytest.raises(Interrupted):
        workbench.logit_lens(name, request)
    assert workbench.store.count_results() == 0
    monkeypatch.undo()
    assert workbench.logit_lens(name, request) is not None and workbench.store.count_results() == 1


def test_progress_callback_that_raises_stores_no_result(workbench, tiny_dirs, settings):
    """A page whose session goes away raises from its progress callback: no result is stored; the
    representations, extracted whole before the callback raised, are kept and are complete."""
    from workbench import concept_datasets
    from workbench.analyses.concept_depth import ConceptDepthRequest
    from workbench.service import Workbench

    name = str(tiny_dirs["gemma3_text"])
    data = concept_datasets.builtin("factual").subset(40)
    request = ConceptDepthRequest(data.name, data.texts, data.labels)

    def cancel_when_probing(fraction, message):
        if message.startswith("Training the probes"):
            raise Interrupted("the session went away")

    with pytest.raises(Interrupted):
        workbench.concept_depth(name, request, progress=cancel_when_probing)
    assert workbench.store.count_results() == 0
    assert workbench.store.count_activation_sets() == 1  # the features, stored whole before probing began

    fresh = Workbench(settings.with_cache_dir(settings.cache_dir.parent / "fresh"))
    try:
        expected = fresh.concept_depth(name, request)
    finally:
        fresh.close()
    assert same_result(workbench.concept_depth(name, request), expected)  # the kept features are complete
    assert workbench.store.count_results() == 1

