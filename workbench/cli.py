"""Command-line entry point: ``layerlens <command>`` (the console script of ``pip install -e .``),
or ``python -m workbench <command>``: serve, run, regenerate, list, cache.

Owns argument parsing and exit codes only; every command calls the backend
(``workbench.service``, ``workbench.export``, ``workbench.store``). A command
registers itself with a function ``add_<name>_command(subparsers)`` that adds
its sub-parser and sets ``handler`` (a function ``args -> exit code``).
Errors the user can fix (``WorkbenchError``) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from workbench.errors import WorkbenchError

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    """Every command's registrar (imported here so ``--help`` lists them all)."""
    from workbench import cli_export, cli_serve
    from workbench.store import admin

    return [cli_serve.add_serve_command, cli_export.register_all, admin.add_cache_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerlens", description="LayerLens workbench: serve it, or run its "
                                     "analyses without the UI.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
