"""Crashes and interruptions never leave partial entries: a writer SIGKILLed mid-write, or while it
compacts the file (copy or swap), leaves a store whose every indexed result and activation set reads
back complete and exact, and an analysis that raises (in its compute or in its progress callback)
stores no result. The writer process lives in ``tests/store_writer.py``."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from tests.store_writer import WRITER_LIMIT, Big, activation_key, big_activations, big_result, result_key
from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import PROJECT_ROOT
from workbench.store import Store, compaction
from workbench.store.codec import same_result


def kill_mid_write(path, start: int, after: int, slack: int | None = None, at: str = "copy") -> tuple[int, int]:
    """Start a writer, SIGKILL it at a random moment after ``after`` reported writes (with ``slack``: after
    the next compaction announced ``at``, "copy" or "swap"); the last reported (committed) result and
    activation indices."""
    code = f"from tests.store_writer import write_forever; write_forever({str(path)!r}, {start}, {slack!r})"
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    last = {"result": -1, "activations": -1}

    def next_line() -> str:
        kind, *index = writer.stdout.readline().split()
        if index:
            last[kind] = int(index[0])
        return kind

    try:
        writes = 0
        while writes < 2 * after:
            writes += next_line() in last
        if slack is None:
            time.sleep(random.uniform(0.0, 0.08))  # lands inside a put or an eviction
        else:
            while next_line() != at:
                pass
            time.sleep(random.uniform(0.0, 0.5 if at == "copy" else 0.02))  # in the copy; in the swap or reopening
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


def test_kill_during_compaction_leaves_a_complete_file(tmp_path):
    """SIGKILL while the store copies itself into a fresh file or swaps it in: the file at the cache's
    path is the old or the new one, complete; the next open removes the leftover copy."""
    random.seed(1)
    path = tmp_path / "compacting.duckdb"
    start = 0
    for round_, at in enumerate(("copy", "swap", "copy", "swap")):
        last_result, last_activations = kill_mid_write(path, start, after=1 + round_ % 2, slack=1 << 20, at=at)
        start = last_result + 1
        leftover = compaction.temporary_path(path).exists()  # killed during the copy
        results, sets = indexed(path)
        print(f"round {round_}: killed after {at!r}, {'during' if leftover else 'after'} the copy, "
              f"{len(results)} results indexed")
        assert last_result in results and last_activations in sets
        with Store(path) as store:
            assert not compaction.temporary_path(path).exists()  # a killed copy is removed on open
            assert store.count_results() == len(results) and store.orphan_rows() == 0
            for index in results:
                assert same_result(store.get_result(result_key(index), Big), big_result(index)), index
            for index in sets:
                assert store.get_activations(activation_key(index)).tobytes() == big_activations(index).tobytes()
    with Store(path, max_bytes=WRITER_LIMIT) as store:
        assert store.stored_bytes() <= WRITER_LIMIT and store.orphan_rows() == 0
        assert compaction.file_bytes(path) <= store.disk_bound()


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

