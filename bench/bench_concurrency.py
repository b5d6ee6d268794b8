"""Benchmark: eight sessions running the logit lens at once on one model, against one alone.

Run with ``.venv/bin/python -m bench.bench_concurrency``. On the default model (smollm2-135m) and
a throwaway store (``bench.common.throwaway_workbench``), every request is a result-cache miss
(each round asks a top-k no earlier round asked, so every key is new). Each round, in turn:

* one        one thread runs one default-length prompt through ``Workbench.run(logit_lens.ANALYSIS, ...)``
* batched    eight threads, each a different default-length prompt, released together; the runtime
             gathers them into one right-padded forward (``LAYERLENS_BATCH_WINDOW_MS``, default 20 ms)
* unbatched  the same eight with batching off (``batch_window_ms=0``): the model lock serialises them

Prints median wall seconds and process CPU seconds (all threads) of each, and the ratios eight / one
measured in this run. CPU time is the steadier number on a shared machine; wall time is what a user waits.
Then, while one thread runs activation patching (IOI pair, every block and head: a long job that
holds the model lock for its traces), another reads a cached logit lens over and over: the wall
seconds of those cache hits (a page that only reads the cache should answer within 0.5 s).
Also the CPU seconds of the forward pass alone (the same traces, nothing decoded) for one prompt and
for the eight as one padded batch: what batching can share. The rest of a lens run, the decoding of
every slot at every position over the whole vocabulary, grows with the number of prompts' tokens.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from bench.common import throwaway_workbench
from workbench import prompts, tracing
from workbench.analyses import activation_patching, logit_lens
from workbench.analyses.logit_lens import MAX_TOP_K, LogitLensRequest
from workbench.config import load_settings
from workbench.runtime import Batcher

PROMPTS = [  # the logit lens page's default, and seven more of its length (5-7 tokens)
    "The capital of France is",
    "The capital of Italy is",
    "The largest planet is",
    "The author of Hamlet is",
    "The currency of Japan is the",
    "Mary gave the book to",
    "The opposite of hot is",
    "Water freezes at zero degrees",
]
TARGET = " Paris"


def _at_once(wb, model: str, requests: list, action=None) -> tuple[float, float]:
    """Wall and process CPU seconds for ``requests`` run by one thread each, released together
    (or for ``action()`` in one thread)."""
    start = threading.Barrier(len(requests) + 1)
    settings_threads = load_settings().threads
    errors: list = []

    def serve(request) -> None:
        start.wait()
        try:
            if action is not None:
                if settings_threads:
                    torch.set_num_threads(settings_threads)
                action()
            else:
                wb.run(logit_lens.ANALYSIS, model, request)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    wall, cpu = time.perf_counter(), time.process_time()
    start.wait()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if errors:
        raise errors[0]
    return wall, cpu


def _in_thread(action) -> tuple[float, float]:
    """Wall and process CPU seconds of ``action()`` run in a fresh thread (with the settings' torch threads)."""
    return _at_once(None, "", [None], action)


def _cached_reads_during_patching(wb, model: str) -> tuple[list[float], float]:
    """Wall seconds of repeated cache hits while activation patching runs in another thread."""
    cached = LogitLensRequest(PROMPTS[0], TARGET, MAX_TOP_K)  # run by the warm-up: in the store
    patching = activation_patching.ActivationPatchingRequest(
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
    finished = threading.Event()
    began = time.perf_counter()

    def long_job() -> None:
        try:
            wb.run(activation_patching.ANALYSIS, model, patching)
        finally:
            finished.set()

    worker = threading.Thread(target=long_job)
    worker.start()
    time.sleep(1.0)  # let it get under way
    reads: list[float] = []
    while not reads or not finished.is_set():
        start = time.perf_counter()
        wb.run(logit_lens.ANALYSIS, model, cached)
        reads.append(time.perf_counter() - start)
        time.sleep(0.2)
    worker.join()
    return reads, time.perf_counter() - began


def _nothing(_unembed, states, real):
    """A reduction that decodes nothing: the trace costs only its forward pass."""
    return real.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.repeats <= (MAX_TOP_K - 1) // 3:
        parser.error(f"--repeats must be between 1 and {(MAX_TOP_K - 1) // 3} (each round needs new top-k keys)")

    with throwaway_workbench() as wb:
        model = wb.model(args.model)
        batching = wb.runtime.batcher
        no_batching = Batcher(0.0, batching.limit)
        wb.runtime.batcher = no_batching
        wb.run(logit_lens.ANALYSIS, args.model, LogitLensRequest(PROMPTS[0], TARGET, MAX_TOP_K))  # warm-up
        times: dict[str, list[tuple[float, float]]] = {"one": [], "batched": [], "unbatched": []}
        for round_ in range(args.repeats):
            k = 1 + 3 * round_  # a new top-k per round and mode: every request below misses the cache
            wb.runtime.batcher = batching
            times["one"].append(_at_once(wb, args.model, [LogitLensRequest(PROMPTS[0], TARGET, k)]))
            times["batched"].append(_at_once(wb, args.model, [LogitLensRequest(p, TARGET, k + 1) for p in PROMPTS]))
            wb.runtime.batcher = no_batching
            times["unbatched"].append(_at_once(wb, args.model, [LogitLensRequest(p, TARGET, k + 2) for p in PROMPTS]))
        cached_reads = _cached_reads_during_patching(wb, args.model)
        ids = [prompts.encode(model, p, wb.settings).ids.tolist() for p in PROMPTS]
        forwards = {"one": [], "eight": []}
        for _ in range(args.repeats):  # in a serving thread, as the requests above ran
            forwards["one"].append(_in_thread(lambda: tracing.reduce_slots_batch(model, ids[:1], _nothing))[1])
            forwards["eight"].append(_in_thread(lambda: tracing.reduce_slots_batch(model, ids, _nothing))[1])
        forward_one, forward_eight = (statistics.median(forwards[m]) for m in ("one", "eight"))

    medians = {mode: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
               for mode, runs in times.items()}
    print(f"model {args.model}: {model.info.n_layers} layers, vocab {model.info.vocab_size}, "
          f"{len(PROMPTS)} prompts, batch window {batching.window_s * 1e3:.0f} ms, {args.repeats} rounds")
    print(f"{'mode':<12}{'wall s':>10}{'cpu s':>10}")
    for mode, (wall, cpu) in medians.items():
        print(f"{mode:<12}{wall:>10.2f}{cpu:>10.2f}")
    one_wall, one_cpu = medians["one"]
    print(f"forward only (cpu s): one prompt {forward_one:.2f}, the eight as one padded batch {forward_eight:.2f}; "
          f"tokens per prompt {min(map(len, ids))}-{max(map(len, ids))}")
    print(f"batched rounds: {args.repeats * len(PROMPTS)} requests, {batching.batched} of them answered by "
          f"{batching.batches} batched forwards (the rest came after the window and ran alone)")
    for mode in ("batched", "unbatched"):
        wall, cpu = medians[mode]
        print(f"RATIO eight {mode} / one: wall {wall / one_wall:.2f}, cpu {cpu / one_cpu:.2f}")
    reads, patching_seconds = cached_reads
    print(f"cached logit lens during activation patching ({patching_seconds:.1f} s): {len(reads)} reads, "
          f"median {statistics.median(reads) * 1e3:.0f} ms, max {max(reads) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
