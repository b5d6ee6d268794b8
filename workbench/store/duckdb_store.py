"""DuckDB store for activations and analysis results: the ``Store`` class.

Owns the open cache file ``cache/workbench.duckdb`` and every read and write
of its entries: results (``get_result``/``put_result``, through ``codec``: JSON
scalars + ``.npy`` arrays, so the round trip is bit-exact) and activation sets
(``get_activations``/``put_activations``: one row per (layer, position) with the
vector as a fixed-size ``FLOAT[d]`` array, inserted and read through Arrow), plus
the inspection and clearing that ``store.admin`` uses, and closing the file at
interpreter exit. Every write is one transaction, with the index row written
last, and every read sees one snapshot: a reader never sees a partial result,
and a process killed mid-write leaves the last committed state.

Limits. The size limit (``max_bytes``, ``LAYERLENS_CACHE_MAX_MB``) counts payload
bytes; least recently used entries are evicted after a write that takes the total
over it. An entry larger than 90% of the limit is not stored: ``put_*`` returns a
``Skipped`` note (logged too) and the caller uses the value for this session.
The file on disk is kept under ``disk_bound()`` = 2 x limit + 32 MB after every
write, clear and open: freed space is reclaimed by a checkpoint and, when the
file is still over, by rewriting it into a fresh file swapped in atomically
(``compaction``; readers wait only for the swap).

Shutdown. ``close`` writes pending last-use times, checkpoints and closes the
connection; every store still open at interpreter exit is closed by an ``atexit``
hook (a server stopped with SIGTERM or Ctrl-C leaves a closed file, no WAL, and
no "nanobind: leaked instances" lines). A closed store raises ``CacheError``.

The rest lives next to it, and the names are re-exported here:

* ``keys``: ``ResultKey``, ``ActivationKey``, ``ids_digest`` (content digests);
* ``schema``: ``SCHEMA_VERSION``, the layout and its migrations (run on open);
* ``eviction``: size accounting, the size limit (``max_bytes``, least recently
  used evicted after a write and on open), oversize entries (``Skipped``),
  ``clear``, ``Removed``;
* ``compaction``: the disk bound and rewriting the file to meet it;
* ``connection``: opening the file, ``move_aside`` (``rebuild=True``), locks, ``Gate``.

One process owns the file read-write (DuckDB's lock): a second server on the
same cache gets ``CacheLocked`` with a clear message. Within a process, use one
``Store`` and it hands each call its own cursor, so threads can share it.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.errors import CacheError
from workbench.store import codec, compaction, eviction
from workbench.store.connection import (
    REBUILD_COMMAND,
    Gate,
    connect,
    mark_closed,
    mark_open,
    move_aside,
    one,
    run_transaction,
)
from workbench.store.eviction import EVICT_TO, LastUse, Removed, Skipped
from workbench.store.keys import KEY_FORMAT, ActivationKey, ResultKey, ids_digest
from workbench.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    open_schema,
    vector_table,
    vector_table_ddl,
    vector_tables,
)

__all__ = [  # the names this module has always offered, wherever they are defined now
    "EVICT_TO", "KEY_FORMAT", "MIGRATIONS", "REBUILD_COMMAND", "SCHEMA_VERSION",
    "ActivationKey", "Removed", "ResultKey", "Skipped", "Store", "close_all", "ids_digest", "move_aside",
]

log = logging.getLogger("layerlens.store")

_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()  # closed by ``close_all`` at interpreter exit
_open_stores_lock = threading.Lock()
EXIT_WAIT_S = 120.0  # at exit, how long to wait for a write (or compaction) in progress to finish


def close_all(timeout: float = EXIT_WAIT_S) -> None:
    """Close every store of this process that is still open (registered with ``atexit``)."""
    with _open_stores_lock:
        stores = list(_open_stores)
    for store in stores:
        try:
            if not store._close(timeout):
                log.warning("The cache %s was busy for %.0f s at exit; leaving it to DuckDB", store.path, timeout)
        except Exception:  # noqa: BLE001  (at exit: report and go on with the next store)
            log.exception("Closing the cache %s at exit failed", store.path)


atexit.register(close_all)


class Store:
    """The cache database. Open once per process; safe to share between threads.

    ``max_bytes``: the size limit on stored payload bytes (None: no limit).
    ``rebuild=True``: move an existing file aside (``<name>.bak-<time>``) and start empty.
    """

    def __init__(self, path: Path, *, max_bytes: int | None = None, rebuild: bool = False):
        self.path = Path(path)
        self.max_bytes = max_bytes if max_bytes and max_bytes > 0 else None
        self.backup_path = move_aside(self.path) if rebuild else None
        self._write_lock = threading.Lock()  # one writer at a time; held by eviction, compaction and close
        self._gate = Gate()  # queries share the connection; closing or swapping it waits for them
        self._stats_lock = threading.Lock()
        self._last_use = LastUse()
        self._con: duckdb.DuckDBPyConnection | None = connect(self.path)
        try:
            open_schema(self._con.cursor(), self.path)
        except BaseException:
            self._con.close()
            raise
        mark_open(self.path)
        compaction.remove_leftovers(self.path)  # we hold the file's lock: a copy there is a killed one's
        self.last_eviction: Removed | None = None
        self.skipped_oversize = 0  # entries not stored because they were too large for the limit
        self.compactions = 0  # fresh files swapped in by this store
        self._fresh_bytes = 0  # the file's size right after the last compaction
        with _open_stores_lock:
            _open_stores.add(self)
        with self._write_lock:  # a lowered limit, or a process killed between a write and its eviction
            with self._writing() as cur:
                self._evict_if_over_limit(cur)
            self._reclaim_disk()

    def close(self) -> None:
        """Write pending last-use times and close the file (waits for a write in progress). Idempotent."""
        self._close(-1)

    def _close(self, timeout: float) -> bool:
        """Close, waiting at most ``timeout`` seconds (-1: forever) for a write; False if it gave up."""
        if not self._write_lock.acquire(timeout=timeout):
            return False
        try:
            if self._con is None:
                return True
            with self._gate.exclusive():
                try:
                    with self._writing() as cur:
                        self._last_use.flush(cur)
                except duckdb.Error:
                    pass  # last-use times are a hint; closing must not fail over them
                con, self._con = self._con, None
                con.close()  # checkpoints: no write-ahead log is left
                del con  # nothing of DuckDB's may outlive interpreter shutdown (nanobind reports leaks)
        finally:
            self._write_lock.release()
        mark_closed(self.path)
        with _open_stores_lock:
            _open_stores.discard(self)
        return True

    @property
    def closed(self) -> bool:
        return self._con is None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ cursors

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        con = self._con
        if con is None:
            raise CacheError(f"The cache {self.path} is closed.")
        return con.cursor()

    @contextmanager
    def _reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for one query, kept out of a close or a file swap."""
        with self._gate.shared():
            cur = self._cursor()
            try:
                yield cur
            finally:
                cur.close()

    @contextmanager
    def _writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for a caller holding the write lock (which keeps closing and swapping out)."""
        cur = self._cursor()
        try:
            yield cur
        finally:
            try:
                cur.close()
            except duckdb.Error:
                pass  # already closed with its connection by a compaction

    # ------------------------------------------------------------------ results

    def get_result(self, key: ResultKey, result_type):
        with self._reading() as cur:  # one statement: one snapshot, index row and arrays together
            rows = cur.execute(
                "SELECT r.scalars_json, a.name, a.npy FROM results r LEFT JOIN result_arrays a"
                " ON a.result_id = r.result_id WHERE r.result_id = ?",
                [key.id],
            ).fetchall()
        if not rows:
            return None
        arrays = {name: bytes(npy) for _, name, npy in rows if name is not None}
        try:
            result = codec.decode(result_type, rows[0][0], arrays)
        except (TypeError, ValueError):
            return None  # stored under an older layout of the result type: a miss, recomputed and replaced
        self._touch("result", key.id)
        return result

    def put_result(self, key: ResultKey, result, *, model_name: str, request_json: str) -> Skipped | None:
        """Store ``result`` under ``key``. None when stored; a ``Skipped`` note (also logged) when it is too
        large for the cache's limit and was not stored (nothing else is evicted for it)."""
        scalars_json, arrays = codec.encode(result)
        n_bytes = len(scalars_json.encode()) + len(request_json.encode()) + sum(len(b) for b in arrays.values())
        skipped = eviction.oversize("result", key.id, f"{key.analysis} result", n_bytes, self.max_bytes)
        if skipped is not None:
            return self._skip(skipped)
        with self._write_lock:
            with self._writing() as cur:
                run_transaction(
                    cur,
                    ("DELETE FROM results WHERE result_id = ?", [key.id]),
                    ("DELETE FROM result_arrays WHERE result_id = ?", [key.id]),
                    *[("INSERT INTO result_arrays VALUES (?, ?, ?)", [key.id, n, b]) for n, b in arrays.items()],
                    ("INSERT OR IGNORE INTO model_names VALUES (?, ?)", [key.model_digest, model_name]),
                    (
                        "INSERT INTO results (result_id, analysis, analysis_version, model_name, model_digest,"
                        " request_digest, request_json, scalars_json, n_bytes, last_used_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [key.id, key.analysis, key.analysis_version, model_name, key.model_digest,
                         key.request_digest, request_json, scalars_json, n_bytes, self._last_use.now()],
                    ),
                )
                self._evict_if_over_limit(cur)
            self._reclaim_disk()
        return None

    def count_results(self, analysis: str | None = None) -> int:
        with self._reading() as cur:
            if analysis is None:
                return one(cur, "SELECT count(*) FROM results")[0]
            return one(cur, "SELECT count(*) FROM results WHERE analysis = ?", [analysis])[0]

    def count_activation_sets(self) -> int:
        with self._reading() as cur:
            return one(cur, "SELECT count(*) FROM activation_sets")[0]

    # ------------------------------------------------------------------ activations

    def get_activations(self, key: ActivationKey) -> np.ndarray | None:
        """The stored (layer, seq, d_model) float32 array, or None."""
        with self._reading() as cur:
            cur.execute("BEGIN TRANSACTION")  # one snapshot for the set's row and its vectors
            try:
                meta = one(
                    cur, "SELECT n_layers, n_positions, d_model FROM activation_sets WHERE activation_id = ?",
                    [key.id],
                )
                if meta is None:
                    return None
                n_layers, n_positions, d_model = meta
                table = cur.sql(
                    f"SELECT vec FROM {vector_table(d_model)} WHERE activation_id = $id ORDER BY layer, position",
                    params={"id": key.id},
                ).to_arrow_table()
            finally:
                cur.execute("COMMIT")
        if table.num_rows != n_layers * n_positions:
            return None
        values = table.column("vec").combine_chunks().values.to_numpy(zero_copy_only=False)
        self._touch("activations", key.id)
        return np.array(values, dtype=np.float32).reshape(n_layers, n_positions, d_model)  # writable copy

    def put_activations(self, key: ActivationKey, activations: np.ndarray) -> Skipped | None:
        """Store a (layer, seq, d_model) array under ``key``. None when stored; a ``Skipped`` note (also
        logged) when it is too large for the cache's limit and was not stored."""
        array = np.ascontiguousarray(activations, dtype=np.float32)
        if array.ndim != 3:
            raise ValueError(f"activations must be (layer, seq, d_model), got shape {array.shape}")
        skipped = eviction.oversize("activations", key.id, f"{key.site} activation set", array.nbytes,
                                    self.max_bytes)
        if skipped is not None:
            return self._skip(skipped)
        n_layers, n_positions, d_model = array.shape
        rows = pa.table({
            "activation_id": pa.array([key.id] * (n_layers * n_positions)),
            "layer": pa.array(np.repeat(np.arange(n_layers, dtype=np.int16), n_positions)),
            "position": pa.array(np.tile(np.arange(n_positions, dtype=np.int32), n_layers)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), d_model),
        })
        table = vector_table(d_model)
        with self._write_lock:
            with self._writing() as cur:
                cur.execute(vector_table_ddl(d_model))
                cur.register("incoming_rows", rows)
                try:
                    run_transaction(
                        cur,
                        ("DELETE FROM activation_sets WHERE activation_id = ?", [key.id]),
                        (f"DELETE FROM {table} WHERE activation_id = ?", [key.id]),
                        (f"INSERT INTO {table} SELECT activation_id, layer, position, "
                         f"vec::FLOAT[{d_model}] FROM incoming_rows", None),
                        ("INSERT INTO activation_sets (activation_id, model_digest, input_digest, site, n_layers,"
                         " n_positions, d_model, n_bytes, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [key.id, key.model_digest, key.input_digest, key.site, n_layers, n_positions, d_model,
                          array.nbytes, self._last_use.now()]),
                    )
                finally:
                    cur.unregister("incoming_rows")
                self._evict_if_over_limit(cur)
            self._reclaim_disk()
        return None

    # ------------------------------------------------------------------ size, disk and last use

    def stored_bytes(self) -> int:
        """Payload bytes of every result and activation set (what the size limit counts)."""
        with self._reading() as cur:
            return eviction.stored_bytes(cur)

    def disk_bound(self) -> int | None:
        """The most the file (with its write-ahead log) takes after any write: 2 x limit + a constant
        (``store.compaction``); None without a limit."""
        return compaction.disk_bound(self.max_bytes)

    def compact(self) -> None:
        """Rewrite the file into a fresh one and swap it in now (normally done when the file outgrows
        the stored data, see ``store.compaction``)."""
        with self._write_lock:
            self._compact()

    def _skip(self, skipped: Skipped) -> Skipped:
        log.warning(skipped.message)
        with self._stats_lock:
            self.skipped_oversize += 1
        return skipped

    def _evict_if_over_limit(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Evict least recently used entries until under EVICT_TO of the limit. Caller holds the write lock,
        after its own write committed: eviction is a transaction of its own."""
        if self.max_bytes is None:
            return
        removed = eviction.evict_over_limit(cur, self.max_bytes, self._last_use)
        if removed is not None:
            self.last_eviction = removed

    def _reclaim_disk(self) -> None:
        """Checkpoint, then compact, when the file outgrew the stored data (``compaction.over_bound``).
        Caller holds the write lock. A failure is logged, not raised: the write it follows stands."""
        try:
            with self._writing() as cur:
                stored = eviction.stored_bytes(cur)
                if not compaction.over_bound(self.path, stored, self._fresh_bytes):
                    return
                cur.execute("CHECKPOINT")  # merges the write-ahead log, gives trailing free blocks back
            if compaction.over_bound(self.path, stored, self._fresh_bytes):
                self._compact()
        except (duckdb.Error, OSError, CacheError) as exc:
            if self._con is None:  # the file could not be opened again after the swap
                raise
            self._fresh_bytes = compaction.file_bytes(self.path)  # retry only after as much growth again
            log.warning("Could not reclaim the disk space of the cache %s: %s", self.path, exc)

    def _compact(self) -> None:
        """Copy into a fresh file (queries go on), then swap it in (queries wait). Caller holds the write lock."""
        with self._writing() as cur:
            self._last_use.flush(cur)
            copy = compaction.write_fresh_copy(cur, self.path)
        with self._gate.exclusive():
            con, self._con = self._con, None
            con.close()
            del con
            try:
                compaction.swap_in(copy, self.path)
            finally:
                self._con = connect(self.path)  # the fresh file; the old one if the swap refused
        self._fresh_bytes = compaction.file_bytes(self.path)
        self.compactions += 1
        log.info("Compacted the cache %s to %.1f MB", self.path, self._fresh_bytes / (1 << 20))

    def _touch(self, kind: str, entry_id: str) -> None:
        pending = self._last_use.record(kind, entry_id)
        if pending >= eviction.TOUCH_FLUSH_AT and self._write_lock.acquire(blocking=False):
            try:
                if self._con is not None:
                    with self._writing() as cur:
                        self._last_use.flush(cur)
            finally:
                self._write_lock.release()

    # ------------------------------------------------------------------ inspection and clearing (store.admin)

    def result_groups(self) -> list[tuple[str, str, str, int, int]]:
        """(analysis, model digest, model names, results, bytes) per analysis and model."""
        return self._groups("results", "analysis")

    def activation_groups(self) -> list[tuple[str, str, str, int, int]]:
        """(site, model digest, model names, activation sets, bytes) per site and model."""
        return self._groups("activation_sets", "site")

    def _groups(self, table: str, column: str) -> list[tuple[str, str, str, int, int]]:
        """(column, model digest, model names, entries, bytes) of ``table`` per column value and model."""
        with self._reading() as cur:
            return cur.execute(
                f"SELECT e.{column}, e.model_digest, coalesce((SELECT string_agg(DISTINCT m.model_name, ', ')"
                " FROM model_names m WHERE m.model_digest = e.model_digest), ''), count(*), sum(e.n_bytes)::BIGINT"
                f" FROM {table} e GROUP BY e.{column}, e.model_digest ORDER BY e.{column}, e.model_digest"
            ).fetchall()

    def orphan_rows(self) -> int:
        """Array or vector rows that no index row refers to (never expected: writes are transactions)."""
        with self._reading() as cur:
            count = one(cur, "SELECT count(*) FROM result_arrays a WHERE NOT EXISTS "
                             "(SELECT 1 FROM results r WHERE r.result_id = a.result_id)")[0]
            for table in vector_tables(cur):
                count += one(cur, f"SELECT count(*) FROM {table} v WHERE NOT EXISTS "
                                  "(SELECT 1 FROM activation_sets s WHERE s.activation_id = v.activation_id)")[0]
            return count

    def model_digests(self, name_or_digest: str) -> list[str]:
        """Digests of the cached models known under this name, or whose digest starts with it (6+ chars)."""
        with self._reading() as cur:
            found = {d for (d,) in cur.execute(
                "SELECT DISTINCT model_digest FROM model_names WHERE model_name = ?", [name_or_digest]).fetchall()}
            if len(name_or_digest) >= 6:
                found |= {d for (d,) in cur.execute(
                    "SELECT model_digest FROM results WHERE starts_with(model_digest, $p) UNION "
                    "SELECT model_digest FROM activation_sets WHERE starts_with(model_digest, $p)",
                    {"p": name_or_digest.lower()}).fetchall()}
        return sorted(found)

    def clear(self, *, analysis: str | None = None, model_digests: list[str] | None = None) -> Removed:
        """Delete the results of ``analysis`` and/or of ``model_digests`` (both: their intersection);
        activation sets of ``model_digests`` too when no analysis is given. Neither: everything,
        including any orphan rows. One transaction; returns what went. The file shrinks with it
        (``compaction``) when that frees enough."""
        with self._write_lock:
            with self._writing() as cur:
                self._last_use.flush(cur)
                removed = eviction.clear(cur, analysis, model_digests)
                cur.execute("CHECKPOINT")  # hand the freed blocks back to the file
            self._reclaim_disk()
            return removed
