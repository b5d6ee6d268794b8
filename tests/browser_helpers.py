"""Shared by the browser tests: Debian chromium's launch flags, the idle-app selector and a
real Streamlit server on a throwaway cache (converted models shared)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.config import PROJECT_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port(low: int = 8610, high: int = 8699) -> int:
    """A free local port in [low, high] (the range reserved for test servers)."""
    for port in range(low, high + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {low}-{high}")


@contextlib.contextmanager
def streamlit_server(cache_dir: Path, log_path: Path, extra_env: dict | None = None) -> Iterator[str]:
    """``app.py`` served on a free port with its own cache; yields the base URL once healthy."""
    port = free_port()
    env = {**os.environ, "LAYERLENS_CACHE_DIR": str(cache_dir),
           "LAYERLENS_MODELS_DIR": str(PROJECT_ROOT / "cache" / "models"), "HF_HUB_OFFLINE": "1",
           **(extra_env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"),
             "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(url: str, log_path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit did not become healthy; log: {log_path}")
