"""Soak: a server process with several sessions (threads sharing one ``Workbench``, as Streamlit
runs them) runs random analyses and random bad inputs on the tiny models against one small cache
(so entries are evicted, skipped as too large, and the file is compacted), and is SIGKILLed at
random moments (after a random number of steps, or while it opens the cache) and restarted.
Afterwards every stored result and activation set equals a fresh recomputation bit for bit (the
codec's bytes, and decoded; only the wall times some results carry, e.g. ``seconds_atp``, differ),
the database opens cleanly with no partial entries, every bad input got a one-line
``WorkbenchError`` and nothing raised anything else. Seeded: the seed is printed. The server
process is ``tests/soak_worker.py``."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from workbench import registry
from workbench.config import PROJECT_ROOT
from workbench.errors import CacheLocked
from workbench.store import ActivationKey, ResultKey, Store
from workbench.store.codec import same_result

SEED = 15
RUNS = 7  # server processes, each killed: the whole test takes about 2-3 minutes on two busy cores
MAX_SECONDS = 100  # no new server is started after this long (a slow machine gets fewer runs)
STEPS = (3, 15)  # a server is killed after this many finished steps (random, inclusive) plus up to 0.5 s
MAX_BYTES = 150_000  # tiny-model results are 1-15 kB, activation sets 30 kB; neuron contexts (~255 kB) too large
SLACK = 256 << 10  # the worker's compaction constant: compacts every few dozen writes
SESSIONS = 3
WALL_TIME = {"seconds", "seconds_act", "seconds_atp", "seconds_relp",  # result fields that time a run: not compared
             "attribution_seconds", "curve_seconds", "fit_seconds"}
FINISHED = {"done", "refused", "bad", "bug"}


class Worker:
    """One ``tests.soak_worker`` process; its JSON lines arrive on a queue (read by a thread)."""

    def __init__(self, config: dict, log: Path):
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.soak_worker", json.dumps(config)],
                                         cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def wait_for(self, event: str, events: list, count: int = 1, timeout: float = 180) -> None:
        """Until ``count`` lines of ``event`` ("step": any finished step) arrived, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while count > 0 and time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            assert item is not None, f"the worker exited before {event!r}: {self.log.read_text()[-3000:]}"
            events.append(item)
            count -= item["event"] == event or (event == "step" and item["event"] in FINISHED)
        assert count <= 0 or event == "step", f"no {event!r} within {timeout} s: {self.log.read_text()[-3000:]}"

    def drain(self, events: list) -> None:
        """After the process ended: every line it printed."""
        self.reader.join(timeout=30)
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                events.append(item)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def test_soak_kills_and_bad_input_leave_an_exact_cache(tiny_dirs, tmp_path):
    rng = random.Random(SEED)
    print(f"soak seed {SEED}")
    models = {arch: str(path) for arch, path in tiny_dirs.items()}
    cache = tmp_path / "cache"
    database = cache / "workbench.duckdb"
    events: list[dict] = []
    runs, kills = 0, Counter()
    started = time.monotonic()
    while runs < RUNS and (time.monotonic() - started < MAX_SECONDS or runs < 3):
        config = dict(mode="serve", cache=str(cache), models=models, seed=SEED * 1000 + runs, sessions=SESSIONS,
                      max_bytes=MAX_BYTES, slack=SLACK)
        worker = Worker(config, tmp_path / f"worker-{runs}.log")
        try:
            if runs % 4 == 3:  # killed while it opens the cache (evicting, compacting)
                worker.wait_for("opening", events)
                time.sleep(rng.uniform(0.0, 0.3))
                kills["opening"] += 1
            else:
                worker.wait_for("ready", events)
                if runs == 0:  # a second process on the same cache is refused, clearly
                    with pytest.raises(CacheLocked, match="in use by another process"):
                        Store(database)
                worker.wait_for("step", events, count=rng.randint(*STEPS), timeout=60)
                time.sleep(rng.uniform(0.0, 0.5))
                kills["serving"] += 1
        finally:
            worker.kill()
        worker.drain(events)
        runs += 1
        with Store(database) as store:  # opens cleanly after every kill, no partial entries
            assert store.orphan_rows() == 0

    counts = Counter(e["event"] for e in events)
    print(f"{runs} runs in {time.monotonic() - started:.0f} s, kills {dict(kills)}, events {dict(counts)}")
    bugs = [e for e in events if e["event"] == "bug"]
    assert bugs == [], bugs[0]["traceback"]
    bad = [e for e in events if e["event"] == "bad"]
    assert bad and [e for e in bad if not e["ok"]] == []
    assert counts["done"] >= 10 and counts["start"] > counts["done"] // 2

    # A fresh recomputation of every request that was started, on an empty cache with no limit.
    attempted = sorted({(e["analysis"], e["arch"], e["request"]) for e in events if e["event"] == "start"})
    reference_cache = tmp_path / "reference"
    config = dict(mode="reference", cache=str(reference_cache), models=models, requests=attempted)
    worker = Worker(config, tmp_path / "reference.log")
    assert worker.proc.wait(timeout=900) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    worker.drain(events)
    assert "leaked" not in (tmp_path / "reference.log").read_text()
    print(f"{len(attempted)} requests recomputed; {time.monotonic() - started:.0f} s so far")

    results, sets = compare_stores(database, reference_cache / "workbench.duckdb")
    print(f"{results} stored results and {sets} activation sets equal a fresh recomputation bit for bit")
    assert results >= 5
    with Store(database, max_bytes=MAX_BYTES) as store:
        assert store.stored_bytes() <= MAX_BYTES and store.orphan_rows() == 0


def compare_stores(soak: Path, reference: Path) -> tuple[int, int]:
    """Every entry of ``soak`` is in ``reference`` with the same bytes (as the codec stored them) and
    decodes to the same result; (results, activation sets) compared."""
    rows = {}
    for name, path in (("soak", soak), ("reference", reference)):
        con = duckdb.connect(str(path), read_only=True)
        try:
            rows[name] = (
                {r[0]: r[1:] for r in con.execute("SELECT result_id, analysis, scalars_json, analysis_version, "
                                                  "model_digest, request_digest FROM results").fetchall()},
                {(r, n): bytes(b) for r, n, b in con.execute("SELECT result_id, name, npy FROM result_arrays")
                 .fetchall()},
                {a: (m, i, s) for a, m, i, s in con.execute(
                    "SELECT activation_id, model_digest, input_digest, site FROM activation_sets").fetchall()},
            )
        finally:
            con.close()
    (soak_results, soak_arrays, soak_sets), (ref_results, ref_arrays, ref_sets) = rows["soak"], rows["reference"]
    missing = set(soak_results) - set(ref_results)
    assert not missing, f"stored results the recomputation did not produce: {[soak_results[m][0] for m in missing]}"
    for result_id, (analysis, scalars, *_) in soak_results.items():
        assert untimed(scalars) == untimed(ref_results[result_id][1]), analysis
        assert {n: b for (r, n), b in soak_arrays.items() if r == result_id and n not in WALL_TIME} == \
               {n: b for (r, n), b in ref_arrays.items() if r == result_id and n not in WALL_TIME}, analysis
    assert set(soak_sets) <= set(ref_sets)
    with Store(soak) as a, Store(reference) as b:
        for result_id, (analysis, _, version, model, request) in soak_results.items():
            key = ResultKey(analysis, version, model, request)
            assert key.id == result_id
            result_type = registry.entry(analysis).Result
            stored, fresh = a.get_result(key, result_type), b.get_result(key, result_type)
            timed = {f.name for f in dataclasses.fields(result_type)} & WALL_TIME
            assert same_result(dataclasses.replace(stored, **{f: getattr(fresh, f) for f in timed}), fresh), analysis
        for activation_id, (model, inputs, site) in soak_sets.items():
            key = ActivationKey(model, inputs, site)
            assert key.id == activation_id
            assert a.get_activations(key).tobytes() == b.get_activations(key).tobytes(), site
    return len(soak_results), len(soak_sets)


def untimed(scalars_json: str) -> dict:
    """A result's stored JSON scalars without its wall times (checked to be times, then dropped)."""
    scalars = json.loads(scalars_json)
    for name in WALL_TIME & set(scalars):
        assert isinstance(scalars[name], float) and scalars[name] >= 0, (name, scalars[name])
        del scalars[name]
    return scalars
