"""Disk space: how big the cache file may get, and rewriting it into a fresh file to shrink it.

Owns the bound on the file's size and the compaction that keeps it. DuckDB never shrinks a
database file by itself: deleted rows stay in their row groups and freed blocks are reused
lazily, so after evictions the file held 2-9x the stored data (measured: 47 MB on disk for 5.5 MB
stored under a 6 MB limit; 34 MB after lowering the limit to 0.5 MB). So after every write, clear
and open the ``Store`` compares the file (with its write-ahead log) with the stored payload bytes:

    compact when  file > 2 x stored + SLACK_BYTES  and  file > last fresh copy + SLACK_BYTES / 2

(the second condition keeps a cache whose fresh copy is itself large, e.g. very many tiny
entries, from compacting on every write). It first runs ``CHECKPOINT``; if the file is still over,
it copies the database into a fresh file next to it (``<name>.compacting``, through DuckDB's
``ATTACH`` + ``COPY FROM DATABASE``: tables, keys, defaults and rows, row counts checked) while
readers go on, then swaps it in with ``os.replace`` (atomic) while no query runs. A process killed
at any point leaves either the old file or the new one, each complete; a leftover
``.compacting`` file is removed on the next open.

The bound, after every write (and on open): file + WAL <= 2 x limit + SLACK_BYTES (32 MB), as long
as a fresh copy of the cache is smaller than 1.5 x limit + SLACK_BYTES / 2 (DuckDB stores MB-sized
entries in ~0.95x their payload bytes, kB-sized ones in ~1.2x, plus ~4 MB of tables and indexes).
While one write runs, the file can exceed it by that write; while compacting, the fresh copy
(about the stored bytes) exists next to it.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from workbench.errors import CacheError

SLACK_BYTES = 32 << 20  # the constant of the bound: empty tables, indexes, a write-ahead log
TARGET_ALIAS = "layerlens_compact_target"


def file_bytes(path: Path) -> int:
    """The database file and its write-ahead log on disk (0 for a missing file)."""
    return sum(_size(p) for p in (Path(path), wal_path(path)))


def wal_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".wal")


def temporary_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".compacting")


def disk_bound(max_bytes: int | None) -> int | None:
    """The documented bound on the file (and WAL) for a size limit; None without one."""
    return None if max_bytes is None else 2 * max_bytes + SLACK_BYTES


def over_bound(path: Path, stored: int, last_fresh: int) -> bool:
    """Whether the file is worth compacting (see the module docstring)."""
    size = file_bytes(path)
    return size > 2 * stored + SLACK_BYTES and size > last_fresh + SLACK_BYTES // 2


def remove_leftovers(path: Path) -> None:
    """Delete a temporary copy left by a process killed while compacting. Only call while holding
    the cache's lock (an open connection), so no other process can be writing that copy."""
    for leftover in (temporary_path(path), wal_path(temporary_path(path))):
        leftover.unlink(missing_ok=True)


def write_fresh_copy(cur: duckdb.DuckDBPyConnection, path: Path) -> Path:
    """Copy the open database (``cur``'s) into ``<name>.compacting`` and close that copy; its path.
    Holds no lock of its own: the caller keeps writers out (readers may go on). Removes the copy and
    raises CacheError when the copy fails or its row counts differ."""
    target = temporary_path(path)
    remove_leftovers(path)
    source = cur.execute("SELECT current_database()").fetchone()[0]
    attached = False
    try:
        cur.execute(f"ATTACH {_literal(target)} AS {TARGET_ALIAS}")
        attached = True
        cur.execute(f"COPY FROM DATABASE {_identifier(source)} TO {TARGET_ALIAS}")
        for (table,) in cur.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                    [source]).fetchall():
            counts = [cur.execute(f"SELECT count(*) FROM {_identifier(db)}.main.{_identifier(table)}").fetchone()[0]
                      for db in (source, TARGET_ALIAS)]
            if counts[0] != counts[1]:
                raise CacheError(f"compacting the cache copied {counts[1]} of {counts[0]} rows of {table}")
        cur.execute(f"DETACH {TARGET_ALIAS}")  # checkpoints and closes the copy
        attached = False
        if wal_path(target).exists():
            raise CacheError("compacting the cache left a write-ahead log next to the copy")
        _fsync(target)
    except BaseException:
        if attached:
            try:
                cur.execute(f"DETACH {TARGET_ALIAS}")
            except duckdb.Error:
                pass
        remove_leftovers(path)
        raise
    return target


def swap_in(copy: Path, path: Path) -> None:
    """Replace ``path`` by ``copy`` atomically. The database must be closed, with no write-ahead log
    (DuckDB would replay an old log into the new file): CacheError, and the copy removed, otherwise."""
    if wal_path(path).exists():
        remove_leftovers(path)
        raise CacheError(f"{wal_path(path)} is still there after closing the cache; not compacting")
    os.replace(copy, path)
    _fsync(path.parent)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
