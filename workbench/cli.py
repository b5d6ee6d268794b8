"""Command-line entry point: ``layerlens <command>`` (the console script of ``pip install -e .``),
or ``python -m workbench <command>``: serve, run, regenerate, list, cache.

Owns argument parsing and exit codes only; every command calls the backend
(``workbench.service``, ``workbench.export``, ``workbench.store``). A command
registers itself with a function ``add_<name>_command(subparsers)`` that adds
its sub-parser and sets ``handler`` (a function ``args -> exit code``).
Errors the user can fix (``WorkbenchError``) print one line and exit 2.

Exit codes (``EXIT_CODES``, also in ``--help``):
    0: done; for ``regenerate``, the regenerated figure is identical
    1: the regenerated figure differs (``regenerate`` only)
    2: bad input: a usage error, a bad bundle or request, a model that cannot be opened (one line on stderr)
    3: an unexpected internal error (a bug: its traceback is printed)
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from workbench.errors import WorkbenchError

Registrar = Callable[[argparse._SubParsersAction], None]
EXIT_SAME, EXIT_DIFFERS, EXIT_BAD_INPUT, EXIT_BUG = 0, 1, 2, 3
EXIT_CODES = ("exit codes: 0 done (regenerate: identical figure), 1 the regenerated figure differs, "
              "2 bad input (one line on stderr), 3 internal error")


def _registrars() -> list[Registrar]:
    """Every command's registrar (imported here so ``--help`` lists them all)."""
    from workbench import cli_export, cli_serve
    from workbench.store import admin

    return [cli_serve.add_serve_command, cli_export.register_all, admin.add_cache_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerlens", description="LayerLens workbench: serve it, or run its "
                                     "analyses without the UI.", epilog=EXIT_CODES)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or EXIT_SAME)
    except WorkbenchError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # a bug: not exit 1, which means "the figure differs"
        traceback.print_exc()
        return EXIT_BUG
