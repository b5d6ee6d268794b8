"""Several sessions on one backend: traces serialised per model, every answer correct."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from workbench.analyses.logit_lens import LogitLensRequest
from workbench.service import Workbench
from workbench.store.codec import same_result

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store",
    "Alice and Bob walked to the park",
    "One two three four",
]


def test_concurrent_requests_match_serial_results(tiny_dirs, settings):
    # one torch thread everywhere (LAYERLENS_THREADS=1): float sums are then bit-identical whichever
    # thread serves a request, so concurrent answers must equal serial ones exactly
    settings = replace(settings, threads=1)
    names = [str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])]
    jobs = [(name, prompt) for name in names for prompt in PROMPTS] * 2  # repeats hit the cache
    workbench = Workbench(settings)
    serial = Workbench(settings.with_cache_dir(settings.cache_dir.parent / "serial"))
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda job: workbench.logit_lens(job[0], LogitLensRequest(job[1])), jobs))
        for (name, prompt), result in zip(jobs, results, strict=True):
            assert same_result(result, serial.logit_lens(name, LogitLensRequest(prompt)))
        assert workbench.store.count_results("logit_lens") == len(names) * len(PROMPTS)
    finally:
        serial.close()
        workbench.close()


def test_the_thread_setting_applies_in_every_serving_thread(tiny_dirs, settings):
    """torch's thread count is per OS thread (OpenMP): each request applies LAYERLENS_THREADS itself."""
    import threading
    from dataclasses import replace

    import torch

    before = torch.get_num_threads()
    seen = []
    wb = Workbench(replace(settings, threads=1))
    try:
        def serve():
            torch.set_num_threads(2)  # what a fresh thread may run with
            wb.logit_lens(str(tiny_dirs["gpt2"]), LogitLensRequest("one two"))
            seen.append(torch.get_num_threads())

        worker = threading.Thread(target=serve)
        worker.start()
        worker.join()
    finally:
        wb.close()
        torch.set_num_threads(before)
    assert seen == [1]
