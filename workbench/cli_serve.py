"""``layerlens serve``: start the Streamlit workbench (the same as ``make run``).

Owns finding the app and handing over to Streamlit. The app (``app.py``, ``app_pages/``, ``ui/``)
lives next to the ``workbench`` package in a clone, so ``pip install -e .`` from a clone gives a
working ``layerlens serve``; an installation without the app says so instead of failing inside
Streamlit. Options after ``--`` go to ``streamlit run`` unchanged (e.g. ``-- --server.port 8600``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from workbench.config import PROJECT_ROOT
from workbench.errors import BadRequest

APP = PROJECT_ROOT / "app.py"


def command(port: int | None, address: str | None, extra: list[str], app: Path = APP) -> list[str]:
    """The ``streamlit run`` command line that serves ``app``."""
    if not app.is_file():
        raise BadRequest(f"The Streamlit app is not installed next to the package (no {app}). Install from a "
                         "clone of the repository with `pip install -e .`, or run `make run` there.")
    line = [sys.executable, "-m", "streamlit", "run", str(app)]
    if port is not None:
        line += ["--server.port", str(port)]
    if address is not None:
        line += ["--server.address", address]
    return line + [arg for arg in extra if arg != "--"]


def _serve(args: argparse.Namespace) -> int:
    line = command(args.port, args.address, args.streamlit_args)
    if args.print_command:
        print(" ".join(line))
        return 0
    # the app reads .streamlit/config.toml from the working directory: run it from the project root
    return subprocess.call(line, cwd=PROJECT_ROOT, env=os.environ.copy())


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="start the workbench in the browser (Streamlit)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Streamlit's, 8501)")
    parser.add_argument("--address", default=None, help="address to listen on (default: 127.0.0.1, see "
                        ".streamlit/config.toml)")
    parser.add_argument("--print-command", action="store_true", help="print the streamlit command and exit")
    parser.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="after --: options for streamlit run")
    parser.set_defaults(handler=_serve)
