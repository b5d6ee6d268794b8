"""DuckDB store for activations and analysis results.

Owns the cache file ``cache/workbench.duckdb``: its schema (versioned), its
keys, and every read and write. Keys are content digests, never Python
``hash()``:

* ``ResultKey``: analysis name + analysis code version + model digest + request digest;
* ``ActivationKey``: model digest + digest of the input token ids + site name.

Activations are stored one row per (layer, position) with the vector as a
fixed-size ``FLOAT[d]`` array, inserted and read through Arrow (one table per
width ``d``). Results are stored through ``codec`` (JSON scalars + ``.npy``
arrays), so the round trip is bit-exact. Every write is one transaction, with
the index row written last: a reader never sees a partial result.

One process owns the file read-write (DuckDB's lock): a second server on the
same cache gets ``CacheLocked`` with a clear message. Within a process, use one
``Store`` and it hands each call its own cursor, so threads can share it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.errors import CacheError, CacheLocked
from workbench.store import codec

SCHEMA_VERSION = 1

_SCHEMA = """
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
        return _digest(SCHEMA_VERSION, self.analysis, self.analysis_version, self.model_digest, self.request_digest)


@dataclass(frozen=True)
class ActivationKey:
    model_digest: str
    input_digest: str  # digest of the token ids, see ``ids_digest``
    site: str  # e.g. "resid": block-0 input then every block output

    @property
    def id(self) -> str:
        return _digest(SCHEMA_VERSION, self.model_digest, self.input_digest, self.site)


def ids_digest(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class Store:
    """The cache database. Open once per process; safe to share between threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._write_lock = threading.Lock()
        self._con = _connect(self.path)
        self._init_schema()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    def _init_schema(self) -> None:
        cur = self._con.cursor()
        try:
            cur.execute(_SCHEMA)
            row = _one(cur, "SELECT value FROM store_meta WHERE name = 'schema_version'")
            if row is None:
                cur.execute("INSERT INTO store_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0]) != SCHEMA_VERSION:
                raise CacheError(
                    f"The cache {self.path} has schema version {row[0]}, this workbench needs "
                    f"{SCHEMA_VERSION}. Move the file aside (it is only a cache) and restart."
                )
        except duckdb.Error as exc:
            raise CacheError(f"The cache {self.path} cannot be used: {exc}") from exc

    # ------------------------------------------------------------------ results

    def get_result(self, key: ResultKey, result_type):
        cur = self._con.cursor()
        row = _one(cur, "SELECT scalars_json FROM results WHERE result_id = ?", [key.id])
        if row is None:
            return None
        arrays = dict(cur.execute("SELECT name, npy FROM result_arrays WHERE result_id = ?", [key.id]).fetchall())
        return codec.decode(result_type, row[0], arrays)

    def put_result(self, key: ResultKey, result, *, model_name: str, request_json: str) -> None:
        scalars_json, arrays = codec.encode(result)
        with self._write_lock:
            self._transaction(
                ("DELETE FROM results WHERE result_id = ?", [key.id]),
                ("DELETE FROM result_arrays WHERE result_id = ?", [key.id]),
                *[("INSERT INTO result_arrays VALUES (?, ?, ?)", [key.id, n, b]) for n, b in arrays.items()],
                (
                    "INSERT INTO results (result_id, analysis, analysis_version, model_name, model_digest,"
                    " request_digest, request_json, scalars_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [key.id, key.analysis, key.analysis_version, model_name, key.model_digest,
                     key.request_digest, request_json, scalars_json],
                ),
            )

    def count_results(self, analysis: str | None = None) -> int:
        cur = self._con.cursor()
        if analysis is None:
            return _one(cur, "SELECT count(*) FROM results")[0]
        return _one(cur, "SELECT count(*) FROM results WHERE analysis = ?", [analysis])[0]

    # ------------------------------------------------------------------ activations

    def get_activations(self, key: ActivationKey) -> np.ndarray | None:
        """The stored (layer, seq, d_model) float32 array, or None."""
        cur = self._con.cursor()
        meta = _one(cur, "SELECT n_layers, n_positions, d_model FROM activation_sets WHERE activation_id = ?", [key.id])
        if meta is None:
            return None
        n_layers, n_positions, d_model = meta
        table = cur.sql(
            f"SELECT vec FROM {_vector_table(d_model)} WHERE activation_id = $id ORDER BY layer, position",
            params={"id": key.id},
        ).to_arrow_table()
        values = table.column("vec").combine_chunks().values.to_numpy(zero_copy_only=False)
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
                     " n_positions, d_model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [key.id, key.model_digest, key.input_digest, key.site, n_layers, n_positions, d_model]),
                    cursor=cur,
                )
            finally:
                cur.unregister("incoming_rows")

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


def _one(cur: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple | None:
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
            raise CacheLocked(
                f"The cache {path} is in use by another process, probably a second workbench server. "
                "Stop that server, or start this one with its own cache "
                f"(LAYERLENS_CACHE_DIR=/some/other/dir). Details: {exc}"
            ) from exc
        raise CacheError(_corrupt_message(path, exc)) from exc
    except duckdb.Error as exc:
        raise CacheError(_corrupt_message(path, exc)) from exc


def _corrupt_message(path: Path, exc: Exception) -> str:
    return (
        f"The cache file {path} cannot be opened; it may be corrupt or from another DuckDB version. "
        f"It holds only recomputable results: move it aside (mv {path} {path}.bak) and restart. "
        f"Details: {exc}"
    )
