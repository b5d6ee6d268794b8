"""Memory and CPU time of reading a concept-depth CSV upload: ``concept_datasets.parse_csv``
against reading the whole file first (decode it, list every row: how the parser worked before it
streamed), on a 20 MB file, on 400,000 short rows under the byte limit and on the largest valid file.

Each case runs in a fresh process, so its peak RSS growth is its own. Run:
``.venv/bin/python -m bench.bench_csv_upload``.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import resource
import time
import tracemalloc

from workbench.concept_datasets import CSV_MAX_CHARS, CSV_MAX_ROWS, parse_csv
from workbench.errors import BadRequest


def _rows(n: int, text: str) -> bytes:
    return ("text,label\n" + "".join(f"{text}{i},{'ab'[i % 2]}\n" for i in range(n))).encode()


CASES = {
    "20 MB file": lambda: _rows(1_000_000, "a fairly ordinary sentence number ")[:20 * 2**20],
    "400,000 short rows (3.8 MB)": lambda: _rows(400_000, "t"),
    "largest valid file (2000 x 400 chars)": lambda: _rows(CSV_MAX_ROWS, "x" * (CSV_MAX_CHARS - 6)),
}


def whole_file(data: bytes) -> int:
    """The reading before streaming: decode everything, list every row, then check the count."""
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    if len(rows) > CSV_MAX_ROWS:
        raise BadRequest(f"The CSV has {len(rows)} rows")
    return len(rows)


def _measure(case: str, reader: str, out) -> None:
    data = CASES[case]()
    call = {"parse_csv": parse_csv, "whole file": whole_file}[reader]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    cpu = time.process_time()
    try:
        call(data)
        outcome = "accepted"
    except BadRequest:
        outcome = "refused"
    cpu = time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    out.send((outcome, peak, rss_growth, cpu))


def measure(case: str, reader: str) -> tuple[str, int, int, float]:
    receive, send = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("spawn").Process(target=_measure, args=(case, reader, send))
    process.start()
    result = receive.recv()
    process.join()
    return result


def main() -> None:
    mib = 2**20
    print(f"{'case':40} {'reader':11} {'outcome':9} {'traced peak':>12} {'RSS growth':>11} {'CPU s':>7}")
    for case in CASES:
        results = {reader: measure(case, reader) for reader in ("whole file", "parse_csv")}
        for reader, (outcome, peak, rss, cpu) in results.items():
            print(f"{case:40} {reader:11} {outcome:9} {peak / mib:9.1f} MiB {rss / mib:7.1f} MiB {cpu:7.3f}")
        old, new = results["whole file"], results["parse_csv"]
        print(f"{'':40} whole file / parse_csv: traced peak {ratio(old[1], new[1], 64 * 1024)}, "
              f"CPU {ratio(old[3], new[3], 0.005)}")


def ratio(old: float, new: float, floor: float) -> str:
    """old / new, or '> old / floor' when new is below what this measures (a refusal before reading)."""
    return f"{old / new:.1f}x" if new >= floor else f"> {old / floor:.0f}x"


if __name__ == "__main__":
    main()
