"""Several sessions on one backend: traces serialised per model, every answer correct."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from workbench.analyses.logit_lens import LogitLensRequest
from workbench.service import Workbench
from workbench.store.codec import same_result

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store",
    "Alice and Bob walked to the park",
    "One two three four",
]


def test_concurrent_requests_match_serial_results(workbench, tiny_dirs, settings):
    names = [str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])]
    jobs = [(name, prompt) for name in names for prompt in PROMPTS] * 2  # repeats hit the cache
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda job: workbench.logit_lens(job[0], LogitLensRequest(job[1])), jobs))
    serial = Workbench(settings.with_cache_dir(settings.cache_dir.parent / "serial"))
    try:
        for (name, prompt), result in zip(jobs, results, strict=True):
            assert same_result(result, serial.logit_lens(name, LogitLensRequest(prompt)))
    finally:
        serial.close()
    assert workbench.store.count_results("logit_lens") == len(names) * len(PROMPTS)
