"""The cache's table layout: schema version, DDL and migrations.

Owns what the tables are and how a file gets to the current layout.
``store_meta.schema_version`` says which layout a file has. A new file is
created with the v1 layout (``SCHEMA_V1``, frozen as shipped) and then migrated
like any old one: the registered ``MIGRATIONS`` take version n to n+1, each in
one transaction. A file newer than this code, or with no migration path, is
refused with a message naming ``python -m workbench cache rebuild``.

Tables: ``results`` (one index row per result) and ``result_arrays`` (its
``.npy`` blobs); ``activation_sets`` (one row per set) and one vector table per
width ``d`` (``activations_d<d>``: one row per (layer, position) with the vector
as a fixed-size ``FLOAT[d]`` array); ``model_names`` (the names each model digest
was used under); ``store_meta``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from workbench.errors import CacheError
from workbench.store.connection import one, rebuild_advice, run_transaction, transaction

SCHEMA_VERSION = 2

# The layout every file starts from, as shipped; later versions are reached through MIGRATIONS only.
SCHEMA_V1 = """
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


def open_schema(cur: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Give a new file the layout, or bring an older one to SCHEMA_VERSION; CacheError when it cannot be."""
    try:
        version = _stored_version(cur, path)
        if version is None:  # a new, empty file
            run_transaction(cur, (SCHEMA_V1, None), ("INSERT INTO store_meta VALUES ('schema_version', '1')", None))
            version = 1
        _check_migratable(version, path)
        while version < SCHEMA_VERSION:
            _migrate(cur, version)
            version += 1
    except duckdb.Error as exc:
        raise CacheError(f"The cache {path} cannot be used: {exc}. {rebuild_advice(path)}") from exc


def vector_table(d_model: int) -> str:
    return f"activations_d{int(d_model)}"


def vector_table_ddl(d_model: int) -> str:
    """The vectors of every activation set of width ``d_model``: one row per (layer, position)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {vector_table(d_model)} (activation_id VARCHAR, layer SMALLINT, "
        f"position INTEGER, vec FLOAT[{d_model}], PRIMARY KEY (activation_id, layer, position))"
    )


def vector_tables(cur: duckdb.DuckDBPyConnection) -> list[str]:
    return [name for (name,) in cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE regexp_full_match(table_name, 'activations_d[0-9]+')"
        " ORDER BY table_name").fetchall()]


def _stored_version(cur: duckdb.DuckDBPyConnection, path: Path) -> int | None:
    tables = {name for (name,) in cur.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if not tables:
        return None
    row = None
    if "store_meta" in tables:
        row = one(cur, "SELECT value FROM store_meta WHERE name = 'schema_version'")
    if row is None or not str(row[0]).isdigit():
        raise CacheError(
            f"The cache {path} has tables but no schema version: it was not written by this "
            f"workbench, or is damaged. {rebuild_advice(path)}"
        )
    return int(row[0])


def _check_migratable(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"The cache {path} has schema version {version}, newer than this workbench understands "
            f"({SCHEMA_VERSION}): it was written by a newer LayerLens. Use that version instead, or: "
            f"{rebuild_advice(path)}"
        )
    missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
    if missing:
        raise CacheError(
            f"The cache {path} has schema version {version}, and this workbench (schema "
            f"{SCHEMA_VERSION}) has no migration from it. {rebuild_advice(path)}"
        )


def _migrate(cur: duckdb.DuckDBPyConnection, version: int) -> None:
    with transaction(cur):
        MIGRATIONS[version](cur)
        cur.execute("UPDATE store_meta SET value = ? WHERE name = 'schema_version'", [str(version + 1)])
