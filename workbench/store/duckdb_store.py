"""DuckDB store for activations and analysis results.

Owns the cache file ``cache/workbench.duckdb``: its schema (versioned, with
migrations), its keys, its size limit (least-recently-used eviction), and every
read and write. Keys are content digests, never Python ``hash()``:

* ``ResultKey``: analysis name + analysis code version + model digest + request digest;
* ``ActivationKey``: model digest + digest of the input token ids + site name.

Activations are stored one row per (layer, position) with the vector as a
fixed-size ``FLOAT[d]`` array, inserted and read through Arrow (one table per
width ``d``). Results are stored through ``codec`` (JSON scalars + ``.npy``
arrays), so the round trip is bit-exact. Every write is one transaction, with
the index row written last, and every read sees one snapshot: a reader never
sees a partial result, and a process killed mid-write leaves the last committed
state.

Schema: ``store_meta.schema_version`` says which layout a file has. Opening an
older file applies the registered migrations (version n -> n+1, each in one
transaction). A file newer than this code, or with no migration path, is
refused with a message naming ``python -m workbench cache rebuild``, which
moves the file aside (``workbench.duckdb.bak-<time>``) and starts empty; nothing
is ever deleted silently.

Size: every entry records its payload bytes (``.npy`` blobs + JSON of a result;
``4 * layers * positions * d`` of an activation set) and when it was last used.
After a write that takes the total over ``max_bytes``, the least recently used
results and activation sets are evicted (each whole, in one transaction) until
the total is under ``EVICT_TO`` of the limit (also on open, for a lowered limit
or a process killed between a write and its eviction). Reads record their use in memory
and write it with the next write (or on close), so reads stay read-only.

One process owns the file read-write (DuckDB's lock): a second server on the
same cache gets ``CacheLocked`` with a clear message. Within a process, use one
``Store`` and it hands each call its own cursor, so threads can share it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.errors import CacheError, CacheLocked
from workbench.store import codec

SCHEMA_VERSION = 2
KEY_FORMAT = 1  # part of every key digest; migrations keep it, so migrated entries stay reachable
REBUILD_COMMAND = "python -m workbench cache rebuild"
EVICT_TO = 0.9  # eviction stops once the stored bytes are under this fraction of the limit
_TOUCH_FLUSH_AT = 512  # pending last-used updates written without waiting for a write

# The layout every file starts from; later versions are reached through MIGRATIONS only.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS store_meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS results (
    result_id VARCHAR PRIMARY KEY,
    analysis VARCHAR, analysis_version INTEGER, model_name VARCHAR, model_digest VARCHAR,
    request_digest VARCHAR, request_json VARCHAR, scalars_json VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS result_arrays (
    result_id VARCHAR, name VARCHAR, npy BLOB, PRIMARY KEY (result_id, name));
CREATE TABLE IF NOT EXISTS activation_sets (
    activation_id VARCHAR PRIMARY KEY, model_digest VARCHAR, input_digest VARCHAR, site VARCHAR,
    n_layers INTEGER, n_positions INTEGER, d_model INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp);
"""


def _migrate_1_to_2(cur: duckdb.DuckDBPyConnection) -> None:
    """Size and last-use per entry (for eviction) and the names each model digest was used under."""
    cur.execute("ALTER TABLE results ADD COLUMN n_bytes BIGINT")
    cur.execute("ALTER TABLE results ADD COLUMN last_used_at TIMESTAMP")
    cur.execute(
        "UPDATE results SET last_used_at = created_at, n_bytes = coalesce(strlen(scalars_json), 0)"
        " + coalesce(strlen(request_json), 0) + coalesce((SELECT sum(octet_length(a.npy)) FROM result_arrays a"
        " WHERE a.result_id = results.result_id), 0)"
    )
    cur.execute("ALTER TABLE activation_sets ADD COLUMN n_bytes BIGINT")
    cur.execute("ALTER TABLE activation_sets ADD COLUMN last_used_at TIMESTAMP")
    cur.execute(
        "UPDATE activation_sets SET last_used_at = created_at,"
        " n_bytes = 4 * n_layers::BIGINT * n_positions::BIGINT * d_model::BIGINT"
    )
    cur.execute(
        "CREATE TABLE model_names (model_digest VARCHAR, model_name VARCHAR, PRIMARY KEY (model_digest, model_name))"
    )
    cur.execute("INSERT OR IGNORE INTO model_names SELECT DISTINCT model_digest, model_name FROM results")


# version n -> the function that turns a version-n file into version n+1 (run in one transaction)
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {1: _migrate_1_to_2}


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


@dataclass(frozen=True)
class ResultKey:
    analysis: str
    analysis_version: int
    model_digest: str
    request_digest: str

    @property
    def id(self) -> str:
        return _digest(KEY_FORMAT, self.analysis, self.analysis_version, self.model_digest, self.request_digest)


@dataclass(frozen=True)
class ActivationKey:
    model_digest: str
    input_digest: str  # digest of the token ids, see ``ids_digest``
    site: str  # e.g. "resid": block-0 input then every block output

    @property
    def id(self) -> str:
        return _digest(KEY_FORMAT, self.model_digest, self.input_digest, self.site)


def ids_digest(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


@dataclass(frozen=True)
class Removed:
    """What one eviction or clear removed."""

    result_ids: tuple[str, ...]
    activation_ids: tuple[str, ...]
    n_bytes: int


_open_paths: set[Path] = set()  # files a Store in this process holds open (rebuild refuses them)
_open_paths_lock = threading.Lock()


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
        self._touch_lock = threading.Lock()
        self._touched: dict[tuple[str, str], dt.datetime] = {}
        self._last_time = dt.datetime.min
        self._con = _connect(self.path)
        try:
            self._open_schema()
        except BaseException:
            self._con.close()
            raise
        with _open_paths_lock:
            _open_paths.add(self.path.resolve())
        self.last_eviction: Removed | None = None
        with self._write_lock:  # a lowered limit, or a process killed between a write and its eviction
            self._evict_if_over_limit()

    def close(self) -> None:
        with self._write_lock:
            try:
                self._flush_touches(self._con.cursor())
            except duckdb.Error:
                pass  # last-use times are a hint; closing must not fail over them
        self._con.close()
        with _open_paths_lock:
            _open_paths.discard(self.path.resolve())

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    def _open_schema(self) -> None:
        cur = self._con.cursor()
        try:
            version = self._stored_version(cur)
            if version is None:  # a new, empty file
                self._transaction(
                    (_SCHEMA_V1, None), ("INSERT INTO store_meta VALUES ('schema_version', '1')", None), cursor=cur
                )
                version = 1
            self._check_migratable(version)
            while version < SCHEMA_VERSION:
                self._migrate(cur, version)
                version += 1
        except duckdb.Error as exc:
            raise CacheError(f"The cache {self.path} cannot be used: {exc}. {_rebuild_advice(self.path)}") from exc

    def _stored_version(self, cur: duckdb.DuckDBPyConnection) -> int | None:
        tables = {name for (name,) in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if not tables:
            return None
        row = None
        if "store_meta" in tables:
            row = _one(cur, "SELECT value FROM store_meta WHERE name = 'schema_version'")
        if row is None or not str(row[0]).isdigit():
            raise CacheError(
                f"The cache {self.path} has tables but no schema version: it was not written by this "
                f"workbench, or is damaged. {_rebuild_advice(self.path)}"
            )
        return int(row[0])

    def _check_migratable(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"The cache {self.path} has schema version {version}, newer than this workbench understands "
                f"({SCHEMA_VERSION}): it was written by a newer LayerLens. Use that version instead, or: "
                f"{_rebuild_advice(self.path)}"
            )
        missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise CacheError(
                f"The cache {self.path} has schema version {version}, and this workbench (schema "
                f"{SCHEMA_VERSION}) has no migration from it. {_rebuild_advice(self.path)}"
            )

    def _migrate(self, cur: duckdb.DuckDBPyConnection, version: int) -> None:
        cur.execute("BEGIN TRANSACTION")
        try:
            MIGRATIONS[version](cur)
            cur.execute("UPDATE store_meta SET value = ? WHERE name = 'schema_version'", [str(version + 1)])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

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
            self._transaction(
                ("DELETE FROM results WHERE result_id = ?", [key.id]),
                ("DELETE FROM result_arrays WHERE result_id = ?", [key.id]),
                *[("INSERT INTO result_arrays VALUES (?, ?, ?)", [key.id, n, b]) for n, b in arrays.items()],
                ("INSERT OR IGNORE INTO model_names VALUES (?, ?)", [key.model_digest, model_name]),
                (
                    "INSERT INTO results (result_id, analysis, analysis_version, model_name, model_digest,"
                    " request_digest, request_json, scalars_json, n_bytes, last_used_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [key.id, key.analysis, key.analysis_version, model_name, key.model_digest,
                     key.request_digest, request_json, scalars_json, n_bytes, self._now()],
                ),
            )
            self._evict_if_over_limit()

    def count_results(self, analysis: str | None = None) -> int:
        cur = self._con.cursor()
        if analysis is None:
            return _one(cur, "SELECT count(*) FROM results")[0]
        return _one(cur, "SELECT count(*) FROM results WHERE analysis = ?", [analysis])[0]

    def count_activation_sets(self) -> int:
        return _one(self._con.cursor(), "SELECT count(*) FROM activation_sets")[0]

    # ------------------------------------------------------------------ activations

    def get_activations(self, key: ActivationKey) -> np.ndarray | None:
        """The stored (layer, seq, d_model) float32 array, or None."""
        cur = self._con.cursor()
        cur.execute("BEGIN TRANSACTION")  # one snapshot for the set's row and its vectors
        try:
            meta = _one(
                cur, "SELECT n_layers, n_positions, d_model FROM activation_sets WHERE activation_id = ?", [key.id]
            )
            if meta is None:
                return None
            n_layers, n_positions, d_model = meta
            table = cur.sql(
                f"SELECT vec FROM {_vector_table(d_model)} WHERE activation_id = $id ORDER BY layer, position",
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
        table = _vector_table(d_model)
        with self._write_lock:
            cur = self._con.cursor()
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (activation_id VARCHAR, layer SMALLINT, "
                f"position INTEGER, vec FLOAT[{d_model}], PRIMARY KEY (activation_id, layer, position))"
            )
            cur.register("incoming_rows", rows)
            try:
                self._transaction(
                    ("DELETE FROM activation_sets WHERE activation_id = ?", [key.id]),
                    (f"DELETE FROM {table} WHERE activation_id = ?", [key.id]),
                    (f"INSERT INTO {table} SELECT activation_id, layer, position, "
                     f"vec::FLOAT[{d_model}] FROM incoming_rows", None),
                    ("INSERT INTO activation_sets (activation_id, model_digest, input_digest, site, n_layers,"
                     " n_positions, d_model, n_bytes, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [key.id, key.model_digest, key.input_digest, key.site, n_layers, n_positions, d_model,
                      array.nbytes, self._now()]),
                    cursor=cur,
                )
            finally:
                cur.unregister("incoming_rows")
            self._evict_if_over_limit()

    # ------------------------------------------------------------------ size and eviction

    def stored_bytes(self) -> int:
        """Payload bytes of every result and activation set (what the size limit counts)."""
        return _stored_bytes(self._con.cursor())

    def _evict_if_over_limit(self) -> None:
        """Evict least recently used entries until under EVICT_TO of the limit. Caller holds the write lock,
        after its own write committed: eviction is a transaction of its own."""
        if self.max_bytes is None:
            return
        cur = self._con.cursor()
        total = _stored_bytes(cur)
        if total <= self.max_bytes:
            return
        self._flush_touches(cur)
        excess = total - int(self.max_bytes * EVICT_TO)
        victims = cur.execute(
            "SELECT kind, id, n_bytes, d_model FROM ("
            " SELECT kind, id, n_bytes, d_model, sum(n_bytes) OVER (ORDER BY last_used_at, kind, id"
            "  ROWS UNBOUNDED PRECEDING) - n_bytes AS before FROM ("
            "  SELECT 'result' AS kind, result_id AS id, n_bytes, last_used_at, NULL::INTEGER AS d_model"
            "  FROM results UNION ALL SELECT 'activations', activation_id, n_bytes, last_used_at, d_model"
            "  FROM activation_sets)) WHERE before < ? ORDER BY before",
            [excess],
        ).fetchall()
        result_ids = tuple(id_ for kind, id_, _, _ in victims if kind == "result")
        activations = [(id_, d) for kind, id_, _, d in victims if kind == "activations"]
        self._delete_entries(cur, result_ids, activations)
        self.last_eviction = Removed(result_ids, tuple(i for i, _ in activations), sum(v[2] for v in victims))

    def _delete_entries(self, cur, result_ids, activations: list[tuple[str, int]]) -> None:
        """Delete whole results (index row + arrays) and activation sets (row + vectors) in one transaction."""
        statements = []
        if result_ids:
            ids = list(result_ids)
            statements += [
                ("DELETE FROM results WHERE result_id IN (SELECT unnest(?::VARCHAR[]))", [ids]),
                ("DELETE FROM result_arrays WHERE result_id IN (SELECT unnest(?::VARCHAR[]))", [ids]),
            ]
        if activations:
            statements.append(("DELETE FROM activation_sets WHERE activation_id IN (SELECT unnest(?::VARCHAR[]))",
                               [[i for i, _ in activations]]))
            for d_model in sorted({d for _, d in activations}):
                ids = [i for i, d in activations if d == d_model]
                statements.append((f"DELETE FROM {_vector_table(d_model)} WHERE activation_id IN "
                                   "(SELECT unnest(?::VARCHAR[]))", [ids]))
        if statements:
            self._transaction(*statements, cursor=cur)

    def _now(self) -> dt.datetime:
        """UTC wall time, strictly increasing within this process (so LRU order never ties)."""
        with self._touch_lock:
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            self._last_time = max(now, self._last_time + dt.timedelta(microseconds=1))
            return self._last_time

    def _touch(self, kind: str, entry_id: str) -> None:
        now = self._now()
        with self._touch_lock:
            self._touched[(kind, entry_id)] = now
            pending = len(self._touched)
        if pending >= _TOUCH_FLUSH_AT and self._write_lock.acquire(blocking=False):
            try:
                self._flush_touches(self._con.cursor())
            finally:
                self._write_lock.release()

    def _flush_touches(self, cur) -> None:
        """Write the last-use times recorded by reads. Caller holds the write lock."""
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        if not touched:
            return
        tables = {"result": ("results", "result_id"), "activations": ("activation_sets", "activation_id")}
        cur.execute("BEGIN TRANSACTION")
        try:
            for kind, (table, id_column) in tables.items():
                rows = [[when, id_] for (k, id_), when in touched.items() if k == kind]
                if rows:
                    cur.executemany(
                        f"UPDATE {table} SET last_used_at = greatest(coalesce(last_used_at, ?), ?)"
                        f" WHERE {id_column} = ?",
                        [[when, when, id_] for when, id_ in rows],
                    )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ inspection and clearing (store.admin)

    def result_groups(self) -> list[tuple[str, str, str, int, int]]:
        """(analysis, model digest, model names, results, bytes) per analysis and model."""
        return self._con.cursor().execute(
            "SELECT r.analysis, r.model_digest, coalesce((SELECT string_agg(DISTINCT m.model_name, ', ')"
            " FROM model_names m WHERE m.model_digest = r.model_digest), ''), count(*), sum(r.n_bytes)::BIGINT"
            " FROM results r GROUP BY r.analysis, r.model_digest ORDER BY r.analysis, r.model_digest"
        ).fetchall()

    def activation_groups(self) -> list[tuple[str, str, str, int, int]]:
        """(site, model digest, model names, activation sets, bytes) per site and model."""
        return self._con.cursor().execute(
            "SELECT s.site, s.model_digest, coalesce((SELECT string_agg(DISTINCT m.model_name, ', ')"
            " FROM model_names m WHERE m.model_digest = s.model_digest), ''), count(*), sum(s.n_bytes)::BIGINT"
            " FROM activation_sets s GROUP BY s.site, s.model_digest ORDER BY s.site, s.model_digest"
        ).fetchall()

    def orphan_rows(self) -> int:
        """Array or vector rows that no index row refers to (never expected: writes are transactions)."""
        cur = self._con.cursor()
        count = _one(cur, "SELECT count(*) FROM result_arrays a WHERE NOT EXISTS "
                          "(SELECT 1 FROM results r WHERE r.result_id = a.result_id)")[0]
        for table in _vector_tables(cur):
            count += _one(cur, f"SELECT count(*) FROM {table} v WHERE NOT EXISTS "
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
            self._flush_touches(cur)
            if analysis is None and model_digests is None:
                removed = self._everything(cur)
                self._transaction(*[(f"DELETE FROM {t}", None) for t in
                                    ("results", "result_arrays", "activation_sets", *_vector_tables(cur))],
                                  cursor=cur)
            else:
                removed = self._matching(cur, analysis, model_digests)
                self._delete_entries(cur, removed.result_ids,
                                     list(zip(removed.activation_ids, self._widths(cur, removed), strict=True)))
            cur.execute("CHECKPOINT")  # hand the freed blocks back to the file
            return removed

    def _everything(self, cur) -> Removed:
        results = cur.execute("SELECT result_id, n_bytes FROM results").fetchall()
        acts = cur.execute("SELECT activation_id, n_bytes FROM activation_sets").fetchall()
        return Removed(tuple(r for r, _ in results), tuple(a for a, _ in acts),
                       sum(n for _, n in results) + sum(n for _, n in acts))

    def _matching(self, cur, analysis, model_digests) -> Removed:
        where, params = [], {}
        if analysis is not None:
            where.append("analysis = $analysis")
            params["analysis"] = analysis
        if model_digests is not None:
            where.append("list_contains($digests, model_digest)")
            params["digests"] = list(model_digests)
        results = cur.execute(f"SELECT result_id, n_bytes FROM results WHERE {' AND '.join(where)}",
                              params).fetchall()
        acts = []
        if analysis is None:
            acts = cur.execute("SELECT activation_id, n_bytes FROM activation_sets "
                               "WHERE list_contains($digests, model_digest)", {"digests": list(model_digests)}
                               ).fetchall()
        return Removed(tuple(r for r, _ in results), tuple(a for a, _ in acts),
                       sum(n for _, n in results) + sum(n for _, n in acts))

    def _widths(self, cur, removed: Removed) -> list[int]:
        if not removed.activation_ids:
            return []
        widths = dict(cur.execute("SELECT activation_id, d_model FROM activation_sets WHERE activation_id IN "
                                  "(SELECT unnest(?::VARCHAR[]))", [list(removed.activation_ids)]).fetchall())
        return [widths[i] for i in removed.activation_ids]

    # ------------------------------------------------------------------ helpers

    def _transaction(self, *statements, cursor=None) -> None:
        cur = cursor or self._con.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            for sql, params in statements:
                cur.execute(sql, params) if params is not None else cur.execute(sql)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise


def move_aside(path: Path) -> Path | None:
    """Rename the cache file (and its write-ahead log) to ``<name>.bak-<time>``; None when there is none.
    Refuses (CacheLocked) while any process, this one included, has the file open."""
    path = Path(path)
    if not path.exists():
        return None
    with _open_paths_lock:
        if path.resolve() in _open_paths:
            raise CacheLocked(f"The cache {path} is open in this process; close it before rebuilding.")
    _refuse_if_locked(path)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    counter = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bak-{stamp}-{counter}")
        counter += 1
    os.replace(path, backup)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():  # left behind, DuckDB would replay it into the new empty file
        os.replace(wal, backup.with_name(backup.name + ".wal"))
    return backup


def _refuse_if_locked(path: Path) -> None:
    try:
        duckdb.connect(str(path)).close()
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise CacheLocked(_locked_message(path, exc)) from exc
    except duckdb.Error:
        pass  # unreadable: that is what rebuilding is for


def _rebuild_advice(path: Path) -> str:
    return (
        f"Run `{REBUILD_COMMAND}` (with the server stopped) to move it aside to {path.name}.bak-<time> and start "
        "an empty cache; it holds only recomputable results."
    )


def _stored_bytes(cur) -> int:
    return _one(cur, "SELECT (SELECT coalesce(sum(n_bytes), 0) FROM results)"
                     " + (SELECT coalesce(sum(n_bytes), 0) FROM activation_sets)")[0]


def _vector_tables(cur) -> list[str]:
    return [name for (name,) in cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE regexp_full_match(table_name, 'activations_d[0-9]+')"
        " ORDER BY table_name").fetchall()]


def _one(cur: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> tuple | None:
    """The first row of a query, with the result fully consumed (DuckDB 2 refuses new work otherwise)."""
    rows = cur.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def _vector_table(d_model: int) -> str:
    return f"activations_d{int(d_model)}"


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"Cannot create the cache directory {path.parent}: {exc}") from exc
    try:
        return duckdb.connect(str(path))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise CacheLocked(_locked_message(path, exc)) from exc
        raise CacheError(_corrupt_message(path, exc)) from exc
    except duckdb.Error as exc:
        raise CacheError(_corrupt_message(path, exc)) from exc


def _locked_message(path: Path, exc: Exception) -> str:
    return (
        f"The cache {path} is in use by another process, probably a second workbench server. "
        "Stop that server, or start this one with its own cache "
        f"(LAYERLENS_CACHE_DIR=/some/other/dir). Details: {exc}"
    )


def _corrupt_message(path: Path, exc: Exception) -> str:
    return (
        f"The cache file {path} cannot be opened; it may be corrupt or from another DuckDB version. "
        f"It holds only recomputable results: move it aside (`{REBUILD_COMMAND}`, or mv {path} {path}.bak) "
        f"and restart. Details: {exc}"
    )
