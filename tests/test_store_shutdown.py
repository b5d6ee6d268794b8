"""Clean shutdown: a process that exits with its store still open (held by a thread, as Streamlit's
resource cache holds the backend) closes the DuckDB connection at exit: no "nanobind: leaked
instances" lines, no write-ahead log left behind, pending last-use times written. The same for a
real ``streamlit run`` server stopped with SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, IDLE, streamlit_server
from workbench.config import PROJECT_ROOT
from workbench.store import ResultKey, Store

WRITER = textwrap.dedent("""
    import sys, threading, time
    from dataclasses import dataclass
    import numpy as np
    from workbench.store import ResultKey, Store

    @dataclass(frozen=True, eq=False)
    class Payload:
        values: np.ndarray

    store = Store(sys.argv[1], max_bytes=10**7)
    for index in range(3):
        store.put_result(ResultKey("payload", 1, "m", str(index)), Payload(np.arange(1000.0) + index),
                         model_name="m", request_json="{}")
    store.get_result(ResultKey("payload", 1, "m", "0"), Payload)  # a last-use time not yet written
    store.count_results()
    if sys.argv[2] == "thread":  # kept alive past interpreter shutdown, like Streamlit's cache does
        threading.Thread(target=lambda held: time.sleep(600), args=(store,), daemon=True).start()
        del store
    print("written", flush=True)
""")


@pytest.mark.parametrize("holder", ["thread", "global"])
def test_exit_with_the_store_open_closes_it_cleanly(tmp_path, holder):
    path = tmp_path / "exit.duckdb"
    done = subprocess.run([sys.executable, "-c", WRITER, str(path), holder], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "written\n", done.stderr
    assert "leaked" not in done.stderr, done.stderr
    assert not path.with_name(path.name + ".wal").exists()  # checkpointed and closed, not abandoned
    con = duckdb.connect(str(path), read_only=True)
    try:
        used = dict(con.execute("SELECT request_digest, last_used_at FROM results").fetchall())
    finally:
        con.close()
    assert used["1"] < used["2"] < used["0"]  # written in order, then 0 read: its use was recorded at exit
    with Store(path) as store:
        assert store.count_results() == 3 and store.orphan_rows() == 0


def test_a_closed_store_says_so(tmp_path):
    store = Store(tmp_path / "closed.duckdb")
    store.close()
    store.close()  # closing twice is harmless
    from workbench.errors import CacheError

    with pytest.raises(CacheError, match="closed"):
        store.count_results()
    with pytest.raises(CacheError, match="closed"):
        store.get_result(ResultKey("a", 1, "m", "r"), dict)


@pytest.mark.browser
def test_streamlit_server_stopped_with_sigterm_closes_the_cache(tmp_path, tiny_dirs):
    """The real app opens the cache on the tuned-lens page (tiny model); SIGTERM stops the server; its
    output has no leaked-instance lines and the cache file is left closed."""
    from playwright.sync_api import sync_playwright

    cache, log = tmp_path / "cache", tmp_path / "server.log"
    with streamlit_server(cache, log) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{url}/tuned_lens?model={tiny_dirs['llama']}")
        page.wait_for_selector(IDLE, timeout=60_000)
        assert (cache / "workbench.duckdb").exists()  # the page opened the cache
        browser.close()
    output = log.read_text()  # the server was terminated (SIGTERM) and waited for
    assert "Stopping..." in output and "leaked" not in output, output[-3000:]
    assert not (cache / "workbench.duckdb.wal").exists()
    with Store(cache / "workbench.duckdb") as store:
        assert store.orphan_rows() == 0
