"""The cache file and its connection.

Owns opening the DuckDB file (a second process gets ``CacheLocked``, a damaged
or foreign file ``CacheError``, each with a message saying what to do), moving
it aside for a rebuild (``move_aside``: the file and its write-ahead log become
``<name>.bak-<time>``; nothing is ever deleted), the set of files a ``Store`` in
this process holds open (a rebuild refuses them), the ``Gate`` that lets queries
share the connection while keeping them out of the moment it is closed or
swapped for a compacted file, and the two cursor helpers every query goes
through: ``one`` (first row, result consumed) and ``transaction`` (BEGIN ...
COMMIT, ROLLBACK on any exception).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from workbench.errors import CacheError, CacheLocked

REBUILD_COMMAND = "python -m workbench cache rebuild"

_open_paths: set[Path] = set()  # files a Store in this process holds open (rebuild refuses them)
_open_paths_lock = threading.Lock()


def connect(path: Path) -> duckdb.DuckDBPyConnection:
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


class Gate:
    """Queries pass ``shared`` together; ``exclusive`` waits for them to finish and holds new ones back
    (it is waiting or held: new queries wait), for closing the connection or swapping the file."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queries = 0
        self._excluding = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._excluding:
                self._cond.wait()
            self._queries += 1
        try:
            yield
        finally:
            with self._cond:
                self._queries -= 1
                if not self._queries:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._excluding += 1
            while self._queries:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._excluding -= 1
                self._cond.notify_all()


def mark_open(path: Path) -> None:
    with _open_paths_lock:
        _open_paths.add(path.resolve())


def mark_closed(path: Path) -> None:
    with _open_paths_lock:
        _open_paths.discard(path.resolve())


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


def rebuild_advice(path: Path) -> str:
    return (
        f"Run `{REBUILD_COMMAND}` (with the server stopped) to move it aside to {path.name}.bak-<time> and start "
        "an empty cache; it holds only recomputable results."
    )


def one(cur: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> tuple | None:
    """The first row of a query, with the result fully consumed (DuckDB 2 refuses new work otherwise)."""
    rows = cur.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


@contextmanager
def transaction(cur: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block in one transaction on ``cur``: committed at the end, rolled back on any exception."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield cur
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


def run_transaction(cur: duckdb.DuckDBPyConnection, *statements: tuple[str, list | dict | None]) -> None:
    """Execute (sql, params) statements in one transaction; params None: the statement has none."""
    with transaction(cur):
        for sql, params in statements:
            cur.execute(sql, params) if params is not None else cur.execute(sql)


def _refuse_if_locked(path: Path) -> None:
    try:
        duckdb.connect(str(path)).close()
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise CacheLocked(_locked_message(path, exc)) from exc
    except duckdb.Error:
        pass  # unreadable: that is what rebuilding is for


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
