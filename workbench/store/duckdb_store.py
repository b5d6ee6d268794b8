"""DuckDB store for activations and analysis results: the ``Store`` class.

Owns the open cache file ``cache/workbench.duckdb`` and every read and write
of its entries: results (``get_result``/``put_result``, through ``codec``: JSON
scalars + ``.npy`` arrays, so the round trip is bit-exact) and activation sets
(``get_activations``/``put_activations``: one row per (layer, position) with the
vector as a fixed-size ``FLOAT[d]`` array, inserted and read through Arrow), plus
the inspection and clearing that ``store.admin`` uses. Every write is one
transaction, with the index row written last, and every read sees one snapshot:
a reader never sees a partial result, and a process killed mid-write leaves the
last committed state.

The rest lives next to it, and the names are re-exported here:

* ``keys``: ``ResultKey``, ``ActivationKey``, ``ids_digest`` (content digests);
* ``schema``: ``SCHEMA_VERSION``, the layout and its migrations (run on open);
* ``eviction``: size accounting, the size limit (``max_bytes``, least recently
  used evicted after a write and on open), ``clear``, ``Removed``;
* ``connection``: opening the file, ``move_aside`` (``rebuild=True``), locks.

One process owns the file read-write (DuckDB's lock): a second server on the
same cache gets ``CacheLocked`` with a clear message. Within a process, use one
``Store`` and it hands each call its own cursor, so threads can share it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.store import codec, eviction
from workbench.store.connection import (
    REBUILD_COMMAND,
    connect,
    mark_closed,
    mark_open,
    move_aside,
    one,
    run_transaction,
)
from workbench.store.eviction import EVICT_TO, LastUse, Removed
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
    "ActivationKey", "Removed", "ResultKey", "Store", "ids_digest", "move_aside",
]


class Store:
    """The cache database. Open once per process; safe to share between threads.

    ``max_bytes``: the size limit on stored payload bytes (None: no limit).
    ``rebuild=True``: move an existing file aside (``<name>.bak-<time>``) and start empty.
    """

    def __init__(self, path: Path, *, max_bytes: int | None = None, rebuild: bool = False):
        self.path = Path(path)
        self.max_bytes = max_bytes if max_bytes and max_bytes > 0 else None
        self.backup_path = move_aside(self.path) if rebuild else None
        self._write_lock = threading.Lock()
        self._last_use = LastUse()
        self._con = connect(self.path)
        try:
            open_schema(self._con.cursor(), self.path)
        except BaseException:
            self._con.close()
            raise
        mark_open(self.path)
        self.last_eviction: Removed | None = None
        with self._write_lock:  # a lowered limit, or a process killed between a write and its eviction
            self._evict_if_over_limit()

    def close(self) -> None:
        with self._write_lock:
            try:
                self._last_use.flush(self._con.cursor())
            except duckdb.Error:
                pass  # last-use times are a hint; closing must not fail over them
        self._con.close()
        mark_closed(self.path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ results

    def get_result(self, key: ResultKey, result_type):
        rows = self._con.cursor().execute(  # one statement: one snapshot, index row and arrays together
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

    def put_result(self, key: ResultKey, result, *, model_name: str, request_json: str) -> None:
        scalars_json, arrays = codec.encode(result)
        n_bytes = len(scalars_json.encode()) + len(request_json.encode()) + sum(len(b) for b in arrays.values())
        with self._write_lock:
            run_transaction(
                self._con.cursor(),
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
            self._evict_if_over_limit()

    def count_results(self, analysis: str | None = None) -> int:
        cur = self._con.cursor()
        if analysis is None:
            return one(cur, "SELECT count(*) FROM results")[0]
        return one(cur, "SELECT count(*) FROM results WHERE analysis = ?", [analysis])[0]

    def count_activation_sets(self) -> int:
        return one(self._con.cursor(), "SELECT count(*) FROM activation_sets")[0]

    # ------------------------------------------------------------------ activations

    def get_activations(self, key: ActivationKey) -> np.ndarray | None:
        """The stored (layer, seq, d_model) float32 array, or None."""
        cur = self._con.cursor()
        cur.execute("BEGIN TRANSACTION")  # one snapshot for the set's row and its vectors
        try:
            meta = one(
                cur, "SELECT n_layers, n_positions, d_model FROM activation_sets WHERE activation_id = ?", [key.id]
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

    def put_activations(self, key: ActivationKey, activations: np.ndarray) -> None:
        array = np.ascontiguousarray(activations, dtype=np.float32)
        if array.ndim != 3:
            raise ValueError(f"activations must be (layer, seq, d_model), got shape {array.shape}")
        n_layers, n_positions, d_model = array.shape
        rows = pa.table({
            "activation_id": pa.array([key.id] * (n_layers * n_positions)),
            "layer": pa.array(np.repeat(np.arange(n_layers, dtype=np.int16), n_positions)),
            "position": pa.array(np.tile(np.arange(n_positions, dtype=np.int32), n_layers)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), d_model),
        })
        table = vector_table(d_model)
        with self._write_lock:
            cur = self._con.cursor()
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
            self._evict_if_over_limit()

    # ------------------------------------------------------------------ size and last use (store.eviction)

    def stored_bytes(self) -> int:
        """Payload bytes of every result and activation set (what the size limit counts)."""
        return eviction.stored_bytes(self._con.cursor())

    def _evict_if_over_limit(self) -> None:
        """Evict least recently used entries until under EVICT_TO of the limit. Caller holds the write lock,
        after its own write committed: eviction is a transaction of its own."""
        if self.max_bytes is None:
            return
        removed = eviction.evict_over_limit(self._con.cursor(), self.max_bytes, self._last_use)
        if removed is not None:
            self.last_eviction = removed

    def _touch(self, kind: str, entry_id: str) -> None:
        pending = self._last_use.record(kind, entry_id)
        if pending >= eviction.TOUCH_FLUSH_AT and self._write_lock.acquire(blocking=False):
            try:
                self._last_use.flush(self._con.cursor())
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
        return self._con.cursor().execute(
            f"SELECT e.{column}, e.model_digest, coalesce((SELECT string_agg(DISTINCT m.model_name, ', ')"
            " FROM model_names m WHERE m.model_digest = e.model_digest), ''), count(*), sum(e.n_bytes)::BIGINT"
            f" FROM {table} e GROUP BY e.{column}, e.model_digest ORDER BY e.{column}, e.model_digest"
        ).fetchall()

    def orphan_rows(self) -> int:
        """Array or vector rows that no index row refers to (never expected: writes are transactions)."""
        cur = self._con.cursor()
        count = one(cur, "SELECT count(*) FROM result_arrays a WHERE NOT EXISTS "
                         "(SELECT 1 FROM results r WHERE r.result_id = a.result_id)")[0]
        for table in vector_tables(cur):
            count += one(cur, f"SELECT count(*) FROM {table} v WHERE NOT EXISTS "
                              "(SELECT 1 FROM activation_sets s WHERE s.activation_id = v.activation_id)")[0]
        return count

    def model_digests(self, name_or_digest: str) -> list[str]:
        """Digests of the cached models known under this name, or whose digest starts with it (6+ chars)."""
        cur = self._con.cursor()
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
        including any orphan rows. One transaction; returns what went."""
        with self._write_lock:
            cur = self._con.cursor()
            self._last_use.flush(cur)
            removed = eviction.clear(cur, analysis, model_digests)
            cur.execute("CHECKPOINT")  # hand the freed blocks back to the file
            return removed
