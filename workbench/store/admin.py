"""Inspecting, clearing and rebuilding the cache, and the ``cache`` command.

Owns the backend of ``python -m workbench cache info | clear | rebuild``:
``summary`` (counts and stored bytes per analysis, per model, per activation
site), ``clear`` (everything, or by analysis and/or model name or digest) and
``rebuild`` (move the file aside and start empty). All of them open the cache
named by the settings (``LAYERLENS_CACHE_DIR``), so a running server's lock
gives ``CacheLocked``, which the CLI prints with exit code 2.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from workbench.config import Settings, load_settings
from workbench.errors import BadRequest
from workbench.store.duckdb_store import Store
from workbench.store.eviction import Removed
from workbench.store.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class ModelRow:
    names: str  # every name the digest was used under ("" when no result recorded one)
    digest: str
    results: int
    activation_sets: int
    n_bytes: int


@dataclass(frozen=True)
class CacheSummary:
    path: Path
    schema_version: int
    file_bytes: int  # the database file and its write-ahead log on disk
    stored_bytes: int  # payload bytes, what the size limit counts
    max_bytes: int | None
    by_analysis: list[tuple[str, int, int]]  # (analysis, results, bytes)
    by_model: list[ModelRow]
    by_site: list[tuple[str, int, int]]  # (site, activation sets, bytes)
    orphan_rows: int

    @property
    def empty(self) -> bool:
        return not self.by_analysis and not self.by_site


def open_store(settings: Settings, *, rebuild: bool = False) -> Store:
    return Store(settings.database_path, max_bytes=settings.cache_max_bytes, rebuild=rebuild)


def summary(settings: Settings) -> CacheSummary | None:
    """What the cache holds; None when there is no cache file yet (nothing is created)."""
    if not settings.database_path.exists():
        return None
    with open_store(settings) as store:
        results, activations = store.result_groups(), store.activation_groups()
        stored, orphans = store.stored_bytes(), store.orphan_rows()
    return CacheSummary(
        path=settings.database_path,
        schema_version=SCHEMA_VERSION,
        file_bytes=_file_bytes(settings.database_path),
        stored_bytes=stored,
        max_bytes=settings.cache_max_bytes,
        by_analysis=_totals((analysis, count, size) for analysis, _, _, count, size in results),
        by_model=_model_rows(results, activations),
        by_site=_totals((site, count, size) for site, _, _, count, size in activations),
        orphan_rows=orphans,
    )


def clear(settings: Settings, *, analysis: str | None = None, model: str | None = None,
          everything: bool = False) -> Removed:
    """Delete cached results (and, unless an analysis is named, activation sets) of ``analysis`` and/or
    ``model`` (a name it was used under or a digest prefix); ``everything`` empties the cache."""
    if everything == (analysis is not None or model is not None):
        raise BadRequest("Say what to clear: --analysis NAME and/or --model NAME_OR_DIGEST, or --all (not both).")
    if not settings.database_path.exists():
        return Removed((), (), 0)
    with open_store(settings) as store:
        if everything:
            return store.clear()
        digests = None
        if model is not None:
            digests = store.model_digests(model)
            if not digests:
                raise BadRequest(f"No cached model is called {model!r} or has a digest starting with it; "
                                 "`python -m workbench cache info` lists the cached models.")
        return store.clear(analysis=analysis, model_digests=digests)


def rebuild(settings: Settings) -> Path | None:
    """Move the cache file aside (``workbench.duckdb.bak-<time>``) and create an empty one; the backup's path."""
    with open_store(settings, rebuild=True) as store:
        return store.backup_path


# --------------------------------------------------------------------------- the command


def add_cache_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache", help="inspect, clear or rebuild the result cache",
        description="Inspect, clear or rebuild the cache (LAYERLENS_CACHE_DIR/workbench.duckdb). "
                    "Stop the server first: it holds the cache file.",
    )
    actions = parser.add_subparsers(dest="cache_action", required=True, metavar="ACTION")
    actions.add_parser("info", help="what is cached, per analysis, model and activation site").set_defaults(
        handler=_info_command)
    clear_parser = actions.add_parser(
        "clear", help="delete cached results and activations",
        description="Delete by analysis and/or model (both: that analysis on that model; a model alone also "
                    "drops its cached activations), or everything with --all.",
    )
    clear_parser.add_argument("--analysis", metavar="NAME", help="an analysis name as `cache info` lists it")
    clear_parser.add_argument("--model", metavar="NAME_OR_DIGEST", help="a model name or digest prefix")
    clear_parser.add_argument("--all", action="store_true", dest="everything", help="empty the whole cache")
    clear_parser.set_defaults(handler=_clear_command)
    actions.add_parser(
        "rebuild", help="move the cache file aside (.bak-<time>) and start an empty one",
        description="For a cache whose schema this version cannot read or migrate, or a damaged file: "
                    "renames it to workbench.duckdb.bak-<time> (nothing is deleted) and creates an empty cache.",
    ).set_defaults(handler=_rebuild_command)


def _info_command(_args) -> int:
    settings = load_settings()
    found = summary(settings)
    print(format_summary(found) if found else f"No cache yet at {settings.database_path}.")
    return 0


def _clear_command(args) -> int:
    removed = clear(load_settings(), analysis=args.analysis, model=args.model, everything=args.everything)
    print(f"Removed {_plural(len(removed.result_ids), 'result')} and "
          f"{_plural(len(removed.activation_ids), 'activation set')} ({format_bytes(removed.n_bytes)}).")
    return 0


def _rebuild_command(_args) -> int:
    settings = load_settings()
    backup = rebuild(settings)
    moved = f"Moved the old cache to {backup}; " if backup else "There was no cache file; "
    print(f"{moved}{settings.database_path} is a new, empty cache (schema {SCHEMA_VERSION}).")
    return 0


def format_summary(found: CacheSummary) -> str:
    limit = f"of a {format_bytes(found.max_bytes)} limit" if found.max_bytes else "(no size limit)"
    lines = [
        f"Cache {found.path} (schema {found.schema_version})",
        f"Stored data {format_bytes(found.stored_bytes)} {limit}; file on disk {format_bytes(found.file_bytes)}",
    ]
    if found.empty:
        lines.append("The cache is empty.")
    if found.by_analysis:
        lines += ["", "Results by analysis:"]
        lines += _table(("analysis", "results", "size"), [(a, n, format_bytes(b)) for a, n, b in found.by_analysis])
    if found.by_model:
        lines += ["", "By model:"]
        lines += _table(("model", "digest", "results", "activation sets", "size"),
                        [(m.names or "?", m.digest[:12], m.results, m.activation_sets, format_bytes(m.n_bytes))
                         for m in found.by_model])
    if found.by_site:
        lines += ["", "Activations by site:"]
        lines += _table(("site", "sets", "size"), [(s, n, format_bytes(b)) for s, n, b in found.by_site])
    if found.orphan_rows:
        lines += ["", f"{found.orphan_rows} array rows belong to no entry; `cache clear --all` removes them."]
    return "\n".join(lines)


def format_bytes(n_bytes: int | None) -> str:
    size = float(n_bytes or 0)
    for unit in ("B", "kB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- helpers


def _totals(rows) -> list[tuple[str, int, int]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, count, size in rows:
        counts[name][0] += count
        counts[name][1] += size
    return [(name, count, size) for name, (count, size) in sorted(counts.items())]


def _model_rows(results, activations) -> list[ModelRow]:
    per_digest: dict[str, list] = defaultdict(lambda: ["", 0, 0, 0])
    for _, digest, names, count, size in results:
        per_digest[digest][0] = names
        per_digest[digest][1] += count
        per_digest[digest][3] += size
    for _, digest, names, count, size in activations:
        per_digest[digest][0] = per_digest[digest][0] or names
        per_digest[digest][2] += count
        per_digest[digest][3] += size
    rows = [ModelRow(names, digest, n_results, n_sets, size)
            for digest, (names, n_results, n_sets, size) in per_digest.items()]
    return sorted(rows, key=lambda row: (row.names, row.digest))


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  " + "  ".join(_align(cell, widths[i], first=i == 0) for i, cell in enumerate(row)) for row in cells]


def _align(cell: str, width: int, *, first: bool) -> str:
    return cell.ljust(width) if first else cell.rjust(width)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _file_bytes(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists())
