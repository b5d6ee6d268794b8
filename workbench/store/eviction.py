"""Size accounting, last use, and removing whole entries (LRU eviction and clearing).

Owns how big the cache is and what leaves it. Every entry records its payload
bytes (``.npy`` blobs + JSON of a result; ``4 * layers * positions * d`` of an
activation set) and when it was last used. After a write that takes the total
over the limit, the least recently used results and activation sets are evicted
(each whole, in one transaction) until the total is under ``EVICT_TO`` of the
limit (also on open, for a lowered limit or a process killed between a write and
its eviction). An entry larger than ``EVICT_TO`` of the limit is not stored at
all (``oversize``): storing it would evict every other entry and then itself; the
caller still gets it for this session, and a ``Skipped`` note says why it was not
kept. Reads record their use in memory (``LastUse``), written with the next
write (or on close), so reads stay read-only. ``clear`` removes entries by
analysis and/or model, or everything. The ``Store`` calls all of these holding
its write lock.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

import duckdb

from workbench.store.connection import one, run_transaction, transaction
from workbench.store.schema import vector_table, vector_tables

EVICT_TO = 0.9  # eviction stops once the stored bytes are under this fraction of the limit
TOUCH_FLUSH_AT = 512  # pending last-used updates written without waiting for a write

_ENTRY_TABLES = {"result": ("results", "result_id"), "activations": ("activation_sets", "activation_id")}


@dataclass(frozen=True)
class Removed:
    """What one eviction or clear removed."""

    result_ids: tuple[str, ...]
    activation_ids: tuple[str, ...]
    n_bytes: int


@dataclass(frozen=True)
class Skipped:
    """An entry too large for the cache: used by its caller, not stored."""

    kind: str  # "result" or "activations"
    entry_id: str
    what: str  # e.g. "logit_lens result", "resid activation set"
    n_bytes: int
    max_bytes: int

    @property
    def message(self) -> str:
        return (f"Not cached: this {self.what} takes {_mb(self.n_bytes)}, more than the cache can keep "
                f"({EVICT_TO:.0%} of its {_mb(self.max_bytes)} limit, LAYERLENS_CACHE_MAX_MB); it is used now "
                "and computed again next time. Raise LAYERLENS_CACHE_MAX_MB to cache it.")


def oversize(kind: str, entry_id: str, what: str, n_bytes: int, max_bytes: int | None) -> Skipped | None:
    """A ``Skipped`` note when an entry of ``n_bytes`` must not be stored under ``max_bytes``, else None."""
    if max_bytes is None or n_bytes <= EVICT_TO * max_bytes:
        return None
    return Skipped(kind, entry_id, what, n_bytes, max_bytes)


def _mb(n_bytes: int) -> str:
    if n_bytes < 1 << 20:
        return f"{n_bytes / 1024:,.1f} kB"
    return f"{n_bytes / (1 << 20):,.1f} MB"


class LastUse:
    """Last-use times recorded by reads and not yet written, and the clock that stamps them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], dt.datetime] = {}
        self._last_time = dt.datetime.min

    def now(self) -> dt.datetime:
        """UTC wall time, strictly increasing within this process (so LRU order never ties)."""
        with self._lock:
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            self._last_time = max(now, self._last_time + dt.timedelta(microseconds=1))
            return self._last_time

    def record(self, kind: str, entry_id: str) -> int:
        """Note that an entry ("result" or "activations") was read now; how many uses are pending."""
        now = self.now()
        with self._lock:
            self._pending[(kind, entry_id)] = now
            return len(self._pending)

    def flush(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Write the pending last-use times in one transaction. Caller holds the store's write lock."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        with transaction(cur):
            for kind, (table, id_column) in _ENTRY_TABLES.items():
                rows = [[when, id_] for (k, id_), when in pending.items() if k == kind]
                if rows:
                    cur.executemany(
                        f"UPDATE {table} SET last_used_at = greatest(coalesce(last_used_at, ?), ?)"
                        f" WHERE {id_column} = ?",
                        [[when, when, id_] for when, id_ in rows],
                    )


def stored_bytes(cur: duckdb.DuckDBPyConnection) -> int:
    """Payload bytes of every result and activation set (what the size limit counts)."""
    return one(cur, "SELECT (SELECT coalesce(sum(n_bytes), 0) FROM results)"
                    " + (SELECT coalesce(sum(n_bytes), 0) FROM activation_sets)")[0]


def evict_over_limit(cur: duckdb.DuckDBPyConnection, max_bytes: int, last_use: LastUse) -> Removed | None:
    """Evict least recently used entries until under EVICT_TO of ``max_bytes``; None when under the limit.
    Run after the caller's own write committed: eviction is a transaction of its own."""
    total = stored_bytes(cur)
    if total <= max_bytes:
        return None
    last_use.flush(cur)
    excess = total - int(max_bytes * EVICT_TO)
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
    delete_entries(cur, result_ids, activations)
    return Removed(result_ids, tuple(i for i, _ in activations), sum(v[2] for v in victims))


def clear(cur: duckdb.DuckDBPyConnection, analysis: str | None, model_digests: list[str] | None) -> Removed:
    """Delete what ``Store.clear`` describes, in one transaction; what went."""
    if analysis is None and model_digests is None:
        removed = _everything(cur)
        run_transaction(cur, *[(f"DELETE FROM {t}", None) for t in
                               ("results", "result_arrays", "activation_sets", *vector_tables(cur))])
    else:
        removed = _matching(cur, analysis, model_digests)
        delete_entries(cur, removed.result_ids, list(zip(removed.activation_ids, _widths(cur, removed), strict=True)))
    return removed


def delete_entries(cur: duckdb.DuckDBPyConnection, result_ids, activations: list[tuple[str, int]]) -> None:
    """Delete whole results (index row + arrays) and activation sets (row + vectors) in one transaction;
    ``activations`` are (id, d_model) pairs."""
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
            statements.append((f"DELETE FROM {vector_table(d_model)} WHERE activation_id IN "
                               "(SELECT unnest(?::VARCHAR[]))", [ids]))
    if statements:
        run_transaction(cur, *statements)


def _everything(cur) -> Removed:
    results = cur.execute("SELECT result_id, n_bytes FROM results").fetchall()
    acts = cur.execute("SELECT activation_id, n_bytes FROM activation_sets").fetchall()
    return _removed(results, acts)


def _matching(cur, analysis, model_digests) -> Removed:
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
    return _removed(results, acts)


def _removed(results: list[tuple[str, int]], acts: list[tuple[str, int]]) -> Removed:
    """Removed from (id, n_bytes) rows of results and of activation sets."""
    return Removed(tuple(r for r, _ in results), tuple(a for a, _ in acts),
                   sum(n for _, n in results) + sum(n for _, n in acts))


def _widths(cur, removed: Removed) -> list[int]:
    if not removed.activation_ids:
        return []
    widths = dict(cur.execute("SELECT activation_id, d_model FROM activation_sets WHERE activation_id IN "
                              "(SELECT unnest(?::VARCHAR[]))", [list(removed.activation_ids)]).fetchall())
    return [widths[i] for i in removed.activation_ids]
