"""The cache's limits hold: an entry too large for the cache is used but not stored (and evicts
nothing), and the file on disk stays within the documented bound (2 x the limit + a constant)
after evictions, a lowered limit and clearing, because freed space is reclaimed."""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pytest

from tests.test_store_admin import Payload, key, payload  # the synthetic result both store tests use
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.service import Workbench
from workbench.store import ActivationKey, Store, compaction
from workbench.store.codec import same_result
from workbench.store.eviction import EVICT_TO

PROMPT = "The capital of France is"
MB = 1 << 20


def acts(index: int, layers: int = 2, positions: int = 8, d: int = 64) -> np.ndarray:
    return np.random.default_rng(50_000 + index).standard_normal((layers, positions, d)).astype(np.float32)


def akey(index: int) -> ActivationKey:
    return ActivationKey("model", f"input-{index}", "resid")


def put(store: Store, index: int, n_floats: int = 2500):
    return store.put_result(key(index), payload(index, n_floats), model_name="m", request_json="{}")


# --------------------------------------------------------------------------- entries larger than the cache


def test_oversize_entry_is_not_stored_and_evicts_nothing(tmp_path, caplog):
    entry = len(payload(0).values.tobytes())  # ~20 kB per result
    limit = int(5.5 * entry)
    with Store(tmp_path / "small.duckdb", max_bytes=limit) as store:
        for index in range(4):
            assert put(store, index) is None  # stored: no note
        before = store.stored_bytes()
        with caplog.at_level(logging.WARNING, logger="layerlens.store"):
            skipped = put(store, 99, n_floats=limit // 8 + 100)  # larger than the whole limit
        for index in range(4):  # everything else is still there, exactly
            assert same_result(store.get_result(key(index), Payload), payload(index)), index
        assert store.last_eviction is None and store.stored_bytes() == before
        assert store.get_result(key(99), Payload) is None and store.count_results() == 4
        assert skipped is not None and skipped.kind == "result" and skipped.entry_id == key(99).id
        assert skipped.n_bytes > limit and skipped.max_bytes == limit and store.skipped_oversize == 1
        assert "not cached" in skipped.message.lower() and "LAYERLENS_CACHE_MAX_MB" in skipped.message
        assert [r.getMessage() for r in caplog.records] == [skipped.message]

        # An activation set over the limit: the same.
        big = acts(7, layers=4, positions=limit // (4 * 4 * 64) + 1)
        assert big.nbytes > limit
        skipped = store.put_activations(akey(7), big)
        assert skipped is not None and skipped.kind == "activations" and skipped.n_bytes == big.nbytes
        assert store.get_activations(akey(7)) is None and store.count_activation_sets() == 0
        assert store.count_results() == 4 and store.last_eviction is None and store.skipped_oversize == 2

        # Between the eviction target and the limit: it would evict everything and then itself; not stored.
        n_floats = int(EVICT_TO * limit) // 8 + 100
        skipped = put(store, 98, n_floats=n_floats)
        assert skipped is not None and EVICT_TO * limit < skipped.n_bytes <= limit
        assert store.count_results() == 4 and store.last_eviction is None and store.orphan_rows() == 0

        # A normal entry still evicts the least recently used ones, as before.
        assert store.get_result(key(0), Payload) is not None  # 0 is now the most recently used
        assert put(store, 4) is None and put(store, 5) is None
        assert set(store.last_eviction.result_ids) == {key(1).id, key(2).id}
        assert store.stored_bytes() <= EVICT_TO * limit
        for index in (0, 3, 4, 5):
            assert same_result(store.get_result(key(index), Payload), payload(index))


def test_oversize_result_is_returned_exact_not_stored_and_reported(settings, tiny_dirs, tmp_path):
    name = str(tiny_dirs["llama"])
    request = LogitLensRequest(PROMPT, target=" Paris")
    reference = Workbench(settings)
    expected = reference.logit_lens(name, request)
    reference.close()

    small = Workbench(settings, store=Store(tmp_path / "tiny-limit.duckdb", max_bytes=2000))
    messages = []
    try:
        result = small.logit_lens(name, request, progress=lambda fraction, message: messages.append(message))
        assert same_result(result, expected)  # the caller gets the result for this session
        assert small.store.count_results() == 0 and small.store.skipped_oversize >= 1
        assert any(m.startswith("Not cached") and "logit_lens" in m for m in messages), messages
    finally:
        small.close()


# --------------------------------------------------------------------------- disk use


def file_bytes(path) -> int:
    return compaction.file_bytes(path)


def fill(store: Store, count: int, n_floats: int = 250_000, start: int = 0) -> None:
    """``count`` results of ~2 MB and activation sets of ~64 kB each."""
    for index in range(start, start + count):
        put(store, index, n_floats)
        store.put_activations(akey(index), acts(index, layers=4, positions=64))


def test_lowering_the_limit_shrinks_the_file(tmp_path):
    path = tmp_path / "big.duckdb"
    with Store(path) as store:
        fill(store, 25)  # ~50 MB stored
    grown = file_bytes(path)
    assert grown > 50 * MB
    limit = 4 * MB
    with Store(path, max_bytes=limit) as store:  # opening under a lower limit evicts ...
        assert store.stored_bytes() <= limit
        assert file_bytes(path) <= store.disk_bound() == 2 * limit + compaction.SLACK_BYTES  # ... and shrinks
        survivors = [i for i in range(25) if store.get_result(key(i), Payload) is not None]
        assert survivors and survivors == list(range(25 - len(survivors), 25))  # the most recent ones
        for index in survivors:
            assert same_result(store.get_result(key(index), Payload), payload(index, 250_000))
        assert store.orphan_rows() == 0
    assert file_bytes(path) <= 2 * limit + compaction.SLACK_BYTES
    assert not list(tmp_path.glob("*.compacting*"))  # no temporary copy left behind


def test_writing_through_a_small_limit_keeps_the_file_bounded(tmp_path, monkeypatch):
    """Before reclaiming, this file grew by ~1 MB per write (28 MB after 25 writes, 4 MB limit)."""
    monkeypatch.setattr(compaction, "SLACK_BYTES", 2 * MB)  # a small constant, so the test can tell
    path = tmp_path / "through.duckdb"
    limit, count, n_floats = 4 * MB, 25, 125_000  # ~1 MB results
    largest = 0
    with Store(path, max_bytes=limit) as store:
        bound = store.disk_bound()
        assert bound == 10 * MB
        for index in range(count):
            put(store, index, n_floats)
            store.put_activations(akey(index), acts(index, layers=4, positions=64))
            store.get_result(key(0), Payload)  # kept hot
            largest = max(largest, file_bytes(path))
            assert file_bytes(path) <= bound, (index, file_bytes(path))
        assert store.compactions > 0
        survivors = [i for i in range(count) if store.get_result(key(i), Payload) is not None]
        assert 0 in survivors and count - 1 in survivors
        for index in survivors:
            assert same_result(store.get_result(key(index), Payload), payload(index, n_floats))
        for index in range(count):
            back = store.get_activations(akey(index))
            assert back is None or back.tobytes() == acts(index, layers=4, positions=64).tobytes()
        assert store.orphan_rows() == 0
    print(f"largest file {largest / MB:.1f} MB for a {limit / MB:.0f} MB limit, {store.compactions} compactions")


def test_clearing_shrinks_the_file(tmp_path):
    path = tmp_path / "cleared.duckdb"
    with Store(path) as store:
        fill(store, 20)
        assert file_bytes(path) > 40 * MB
        store.clear()
        assert store.count_results() == 0
        assert file_bytes(path) <= compaction.SLACK_BYTES
        put(store, 1)  # still usable after the swap
        assert same_result(store.get_result(key(1), Payload), payload(1))


def test_a_compacted_file_keeps_the_layout_and_every_entry(tmp_path):
    path = tmp_path / "layout.duckdb"

    def layout(con):
        columns = con.execute("SELECT table_name, column_name, data_type, column_default, is_nullable "
                              "FROM duckdb_columns() WHERE database_name = current_database() "
                              "ORDER BY ALL").fetchall()
        constraints = con.execute("SELECT table_name, constraint_type, constraint_text FROM duckdb_constraints() "
                                  "WHERE database_name = current_database() ORDER BY ALL").fetchall()
        return columns, constraints

    with Store(path) as store:
        fill(store, 6, n_floats=20_000)
        store.put_activations(ActivationKey("model", "wide", "resid"), acts(1, d=96))
    con = duckdb.connect(str(path))
    before = layout(con)
    meta = con.execute("SELECT * FROM store_meta ORDER BY ALL").fetchall()
    last_used = con.execute("SELECT result_id, last_used_at, created_at FROM results ORDER BY ALL").fetchall()
    con.close()
    with Store(path) as store:
        store.compact()
        assert store.compactions == 1
        for index in range(6):
            assert same_result(store.get_result(key(index), Payload), payload(index, 20_000))
            assert store.get_activations(akey(index)).tobytes() == acts(index, layers=4, positions=64).tobytes()
        assert store.get_activations(ActivationKey("model", "wide", "resid")).tobytes() == acts(1, d=96).tobytes()
    con = duckdb.connect(str(path))
    try:
        assert layout(con) == before
        assert con.execute("SELECT * FROM store_meta ORDER BY ALL").fetchall() == meta
        after = {r: (u, c) for r, u, c in con.execute("SELECT result_id, last_used_at, created_at FROM results")
                 .fetchall()}
        assert sorted(after) == sorted(r for r, _, _ in last_used)
        assert all(after[r][1] == c and after[r][0] >= u for r, u, c in last_used)  # times kept (reads: later)
        with pytest.raises(duckdb.ConstraintException):  # the primary keys came along
            con.execute("INSERT INTO results (result_id) SELECT result_id FROM results LIMIT 1")
    finally:
        con.close()


def test_readers_keep_working_while_the_store_compacts(tmp_path):
    import threading

    path = tmp_path / "busy.duckdb"
    with Store(path) as store:
        fill(store, 8, n_floats=50_000)
        errors, reads, stop = [], [0], threading.Event()

        def reader(seed):
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                index = int(rng.integers(8))
                try:
                    assert same_result(store.get_result(key(index), Payload), payload(index, 50_000))
                    assert store.get_activations(akey(index)) is not None
                    reads[0] += 1
                except Exception as exc:  # noqa: BLE001 (collected and reported below)
                    errors.append(repr(exc))

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(4):
                store.compact()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert errors == [] and reads[0] > 0 and store.compactions == 4
