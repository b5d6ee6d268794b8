"""Several sessions on one backend: batched lens requests, cached answers that never wait, every
answer correct.

* Unbatched (``batch_window_ms=0``), concurrent requests equal serial ones bit for bit.
* Concurrent logit-lens requests on one model run as ONE right-padded forward (forwards counted
  at the embedding) and equal sequential single runs to 1e-5, on every tiny architecture; a bad
  request in a batch fails alone.
* The ``Batcher`` itself (no model): progress is relayed in each caller's own thread, a caller
  that gives up cancels nobody else, a failing ``run_batch`` falls back to single runs.
* A result-cache hit returns while a long run holds the model lock, while the model is being
  loaded and while the store's write lock is held (proved with events and locks, not timings).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pytest

from workbench.analyses import logit_lens
from workbench.analyses.base import Analysis
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.errors import BadAnswer, BadRequest
from workbench.runtime import Batcher
from workbench.service import Workbench
from workbench.store.codec import same_result

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store",
    "Alice and Bob walked to the park",
    "One two three four",
]
# eight prompts of different lengths (1 to ~15 tokens in the tiny tokenizer), some with a target
BATCH = [
    LogitLensRequest("The capital of France is", " Paris", 5),
    LogitLensRequest("When Mary and John went to the store, John gave a drink to", "", 3),
    LogitLensRequest("One", "", 5),
    LogitLensRequest("Alice and Bob walked to the park", " Paris", 2),
    LogitLensRequest("One two three four five six seven eight nine ten.", "", 7),
    LogitLensRequest("The capital of Italy is Rome. The capital of France", " Paris", 4),
    LogitLensRequest("seven", " the", 1),
    LogitLensRequest("Bob threw a ball", "", 5),
]
TIMEOUT = 60  # seconds: generous bounds that only a waiting (or hung) request can reach


def test_concurrent_requests_match_serial_results(tiny_dirs, settings):
    # one torch thread everywhere (LAYERLENS_THREADS=1) and no batching: float sums are then
    # bit-identical whichever thread serves a request, so concurrent answers must equal serial ones exactly
    settings = replace(settings, threads=1, batch_window_ms=0)
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


def test_concurrent_requests_on_two_models_with_batching_match_serial_results(tiny_dirs, settings):
    """The same mix with batching on (the default): batches never mix models, repeats hit the cache,
    and every answer equals the serial unbatched one to float tolerance."""
    names = [str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])]
    jobs = [(name, prompt) for name in names for prompt in PROMPTS] * 2
    workbench = Workbench(replace(settings, threads=1, batch_window_ms=200))
    serial = Workbench(replace(settings, threads=1, batch_window_ms=0,
                               cache_dir=settings.cache_dir.parent / "serial"))
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda job: workbench.logit_lens(job[0], LogitLensRequest(job[1])), jobs))
        for (name, prompt), result in zip(jobs, results, strict=True):
            assert_same_lens(result, serial.logit_lens(name, LogitLensRequest(prompt)))
        assert workbench.runtime.batcher.batches >= 1  # some requests did share a forward
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


# ------------------------------------------------------------------------------ batched logit lens


def assert_same_lens(got, want, atol: float = 1e-5) -> None:
    """A batched logit-lens result equals the single run to ``atol``: probabilities absolutely, KL
    (nats, up to ~200 on a real model) also relatively, float32 noise scaling with the value. Top-k
    ids must be equal, except where two candidates' probabilities are tied within ``atol`` (their
    order is float noise); target ranks too, except deep in the vocabulary (see below)."""
    assert got.model_name == want.model_name
    assert got.tokens.tolist() == want.tokens.tolist()
    assert got.layer_labels.tolist() == want.layer_labels.tolist()
    assert (got.target_token, got.target_id) == (want.target_token, want.target_id)
    assert got.top_ids.shape == want.top_ids.shape
    np.testing.assert_allclose(got.top_probs, want.top_probs, rtol=0, atol=atol)
    np.testing.assert_allclose(got.kl_to_final, want.kl_to_final, rtol=atol, atol=atol)
    np.testing.assert_allclose(got.target_prob, want.target_prob, rtol=0, atol=atol)
    # a target's rank is exact near the top; deep in a real vocabulary (thousands of logits within one
    # nat) float noise may move it by one per thousand (seen: 2626 vs 2627 on SmolLM2)
    slack = np.where(want.target_rank <= 100, 0, np.ceil(want.target_rank * 1e-3))
    assert np.all(np.abs(got.target_rank - want.target_rank) <= slack), (got.target_rank, want.target_rank)
    probs = want.top_probs
    tied = np.zeros(probs.shape, dtype=bool)
    tied[..., 1:] |= np.abs(probs[..., 1:] - probs[..., :-1]) <= atol
    tied[..., :-1] |= np.abs(probs[..., 1:] - probs[..., :-1]) <= atol
    differ = got.top_ids != want.top_ids
    assert not np.any(differ & ~tied), np.argwhere(differ & ~tied)[:5]
    assert (got.top_tokens == want.top_tokens)[~differ].all()


def _count_forwards(model) -> tuple[list, object]:
    """Record the (batch, seq) shape of every forward pass of ``model`` (at its embedding)."""
    shapes: list = []
    embedding = model.hf_model.get_input_embeddings()
    handle = embedding.register_forward_hook(lambda _module, args, _out: shapes.append(tuple(args[0].shape)))
    return shapes, handle


def _run_at_once(workbench: Workbench, model_name: str, requests: list) -> list:
    """Every request in its own thread, released together; each outcome is a result or an exception."""
    start = threading.Barrier(len(requests))
    outcomes: list = [None] * len(requests)

    def serve(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = workbench.logit_lens(model_name, requests[i])
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a request never came back"
    return outcomes


def _batching(settings, n: int):
    # a long window that closes as soon as all n requests are in: the batch is decided by count, not by timing
    return replace(settings, threads=1, batch_window_ms=30_000, batch_max=n)


def test_concurrent_lens_requests_run_as_one_batched_forward_equal_to_single_runs(tiny_dir, settings):
    name = str(tiny_dir)
    batched = Workbench(_batching(settings, len(BATCH)))
    single = Workbench(replace(settings, threads=1, batch_window_ms=0,
                               cache_dir=settings.cache_dir.parent / "single"))
    try:
        model = batched.model(name)
        shapes, handle = _count_forwards(model)
        try:
            outcomes = _run_at_once(batched, name, BATCH)
        finally:
            handle.remove()
        lengths = [len(r.tokens) for r in outcomes]
        assert len(set(lengths)) >= 5  # the prompts really differ in length
        assert shapes == [(len(BATCH), max(lengths))]  # ONE forward, every prompt a row, padded to the longest
        assert (batched.runtime.batcher.batches, batched.runtime.batcher.batched) == (1, len(BATCH))
        for request, result in zip(BATCH, outcomes, strict=True):
            want = single.logit_lens(name, request)  # the same request alone, unbatched
            assert result.top_ids.shape[-1] == request.top_k
            assert_same_lens(result, want)
        assert batched.store.count_results("logit_lens") == len(BATCH)  # each answer stored under its own key
    finally:
        single.close()
        batched.close()


def test_a_bad_request_in_a_batch_fails_alone(tiny_dirs, settings):
    name = str(tiny_dirs["llama"])
    requests = [LogitLensRequest("The capital of France is", " Paris France"),  # two tokens: a bad target
                LogitLensRequest("One two three", ""), LogitLensRequest("Alice and Bob", " Paris")]
    wb = Workbench(_batching(settings, len(requests)))
    try:
        shapes, handle = _count_forwards(wb.model(name))
        try:
            outcomes = _run_at_once(wb, name, requests)
        finally:
            handle.remove()
        assert isinstance(outcomes[0], BadAnswer) and "is 2 tokens" in str(outcomes[0])
        assert [type(o) for o in outcomes[1:]] == [logit_lens.LogitLensResult] * 2
        assert len(shapes) == 1 and shapes[0][0] == 2  # the two good requests still shared one forward
        assert wb.store.count_results("logit_lens") == 2
    finally:
        wb.close()


def test_equal_requests_in_a_batch_are_computed_once(tiny_dirs, settings):
    name = str(tiny_dirs["gpt2"])
    requests = [LogitLensRequest("One two three", "")] * 3 + [LogitLensRequest("Alice and Bob", "")]
    wb = Workbench(_batching(settings, len(requests)))
    try:
        shapes, handle = _count_forwards(wb.model(name))
        try:
            outcomes = _run_at_once(wb, name, requests)
        finally:
            handle.remove()
        assert len(shapes) == 1 and shapes[0][0] == 2
        assert all(same_result(outcomes[0], o) for o in outcomes[1:3])
    finally:
        wb.close()


def test_a_batch_of_long_prompts_is_split_into_traces_within_the_lens_budget():
    from types import SimpleNamespace

    from workbench import lenses

    vocab = 49152
    cap = lenses.LENS_BUDGET_BYTES // (4 * 4 * vocab)  # tokens whose four (tokens, vocab) float32 arrays fit
    assert cap == 341
    items = [(i, None, SimpleNamespace(ids=[0] * n), None) for i, n in enumerate([100, 200, 50, 400, 10])]
    groups = logit_lens._token_groups(items, vocab)
    assert [[item[0] for item in group] for group in groups] == [[0, 1], [2], [3], [4]]  # in order, none dropped
    assert all(sum(len(item[2].ids) for item in g) <= cap or len(g) == 1 for g in groups)


# ------------------------------------------------------------------------------ the Batcher alone


@dataclass(frozen=True)
class _Echo:
    text: str


class _FakeContext:
    runtime = local = model_name = None


def _echo_analysis(run_batch) -> Analysis:
    return Analysis(name="echo", version=1, title="Echo", Request=_Echo, Result=str,
                    run=lambda ctx, request, progress: f"alone:{request.text}", run_batch=run_batch)


def _gather(batcher: Batcher, analysis: Analysis, texts: list[str], progresses: list) -> list:
    start = threading.Barrier(len(texts))
    outcomes: list = [None] * len(texts)

    def serve(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = batcher.run(("m", "d", "echo", 1), _FakeContext(), analysis, _Echo(texts[i]), progresses[i])
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=serve, args=(i,), name=f"caller-{i}") for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a caller never came back"
    return outcomes


def test_batch_progress_is_reported_in_each_callers_own_thread():
    calls = []

    def run_batch(ctx, requests, progress):
        progress(0.5, "half")
        return [f"batch:{r.text}" for r in requests]

    def progress_of(i):
        return lambda fraction, message: calls.append((i, threading.current_thread().name, fraction, message))

    texts = ["a", "b", "c", "d"]
    outcomes = _gather(Batcher(30.0, len(texts)), _echo_analysis(run_batch), texts,
                       [progress_of(i) for i in range(len(texts))])
    assert outcomes == [f"batch:{t}" for t in texts]
    assert sorted(calls) == [(i, f"caller-{i}", 0.5, "half") for i in range(len(texts))]


def test_a_caller_that_gives_up_cancels_nobody_else():
    class Stop(BaseException):  # like Streamlit's stop: raised by the caller's own progress callback
        pass

    def run_batch(ctx, requests, progress):
        progress(None, "working")
        return [f"batch:{r.text}" for r in requests]

    def stopper(_fraction, _message):
        raise Stop()

    texts = ["a", "b", "c"]
    outcomes = _gather(Batcher(30.0, len(texts)), _echo_analysis(run_batch), texts,
                       [stopper, lambda *_: None, stopper])
    assert isinstance(outcomes[0], Stop) and isinstance(outcomes[2], Stop)
    assert outcomes[1] == "batch:b"


def test_a_failing_batch_falls_back_to_single_runs_and_workbench_errors_reach_everyone():
    def broken(ctx, requests, progress):
        raise RuntimeError("a bug in run_batch")

    texts = ["a", "b", "c"]
    quiet = [lambda *_: None] * len(texts)
    assert _gather(Batcher(30.0, 3), _echo_analysis(broken), texts, quiet) == ["alone:a", "alone:b", "alone:c"]

    def refused(ctx, requests, progress):
        raise BadRequest("the model cannot be loaded")

    outcomes = _gather(Batcher(30.0, 3), _echo_analysis(refused), texts, quiet)
    assert all(isinstance(o, BadRequest) for o in outcomes)


def test_batches_are_capped_and_a_lone_request_runs_unbatched():
    sizes = []

    def run_batch(ctx, requests, progress):
        sizes.append(len(requests))
        return [f"batch:{r.text}" for r in requests]

    texts = [str(i) for i in range(5)]
    outcomes = _gather(Batcher(0.5, 2), _echo_analysis(run_batch), texts, [lambda *_: None] * len(texts))
    assert sorted(sizes + [1] * sum(o.startswith("alone:") for o in outcomes)) == [1, 2, 2]
    assert all(o.endswith(t) for o, t in zip(outcomes, texts, strict=True))


# ------------------------------------------------------------------------------ cached answers never wait


def _in_thread(action) -> tuple[threading.Event, list]:
    done, box = threading.Event(), []

    def target():
        try:
            box.append(action())
        except BaseException as exc:
            box.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, daemon=True).start()
    return done, box


def test_a_cached_answer_returns_while_a_long_run_holds_the_model(tiny_dirs, settings):
    name = str(tiny_dirs["llama"])
    wb = Workbench(replace(settings, threads=1))
    cached_request = LogitLensRequest("The capital of France is", " Paris")
    try:
        expected = wb.logit_lens(name, cached_request)  # cached now
        model = wb.model(name)
        inside, release = threading.Event(), threading.Event()

        def slow_forward(_module, _args):  # a deliberately slow forward: it waits for the test
            inside.set()
            release.wait(TIMEOUT)

        handle = model.hf_model.get_input_embeddings().register_forward_pre_hook(slow_forward)
        try:
            long_done, long_box = _in_thread(lambda: wb.logit_lens(name, LogitLensRequest("Alice and Bob walked")))
            assert inside.wait(TIMEOUT)
            held = _in_thread(lambda: model.lock.acquire(blocking=False))  # another thread's view of the lock
            assert held[0].wait(TIMEOUT) and held[1] == [False]  # the long run holds the model lock
            writer = wb.store._con.cursor()  # and a long store write is under way: its lock held, a
            writer.execute("BEGIN TRANSACTION")  # transaction open that rewrites the very row being read
            writer.execute("UPDATE results SET n_bytes = n_bytes + 1")
            try:
                with wb.store._write_lock:
                    done, box = _in_thread(lambda: wb.logit_lens(name, cached_request))
                    assert done.wait(TIMEOUT), "the cached answer waited for the running job"
            finally:
                writer.execute("ROLLBACK")
            assert not long_done.is_set()  # answered while the long run was still inside its forward
        finally:
            release.set()
            handle.remove()
        assert same_result(box[0], expected)
        assert long_done.wait(TIMEOUT) and isinstance(long_box[0], logit_lens.LogitLensResult)
    finally:
        wb.close()


def test_a_cached_answer_returns_while_its_model_is_loading(tiny_dirs, settings, monkeypatch):
    from workbench.models import pool as pool_module

    name = str(tiny_dirs["gpt2"])
    wb = Workbench(replace(settings, threads=1))
    cached_request = LogitLensRequest("One two three")
    try:
        expected = wb.logit_lens(name, cached_request)
        wb.runtime.pool._loaded.clear()  # as after a restart with a warm cache: the model must load again
        loading, release = threading.Event(), threading.Event()
        real_load = pool_module.loader.load

        def slow_load(local, settings):
            loading.set()
            release.wait(TIMEOUT)
            return real_load(local, settings)

        monkeypatch.setattr(pool_module.loader, "load", slow_load)
        try:
            load_done, load_box = _in_thread(lambda: wb.logit_lens(name, LogitLensRequest("Alice and Bob")))
            assert loading.wait(TIMEOUT)
            done, box = _in_thread(lambda: wb.logit_lens(name, cached_request))
            assert done.wait(TIMEOUT), "the cached answer waited for the model to load"
            assert not load_done.is_set()
        finally:
            release.set()
        assert same_result(box[0], expected)
        assert load_done.wait(TIMEOUT) and isinstance(load_box[0], logit_lens.LogitLensResult)
    finally:
        wb.close()


@pytest.mark.parametrize("window_ms", [0.0, 20.0])
def test_batching_settings_come_from_the_environment(monkeypatch, window_ms):
    from workbench.config import load_settings

    monkeypatch.setenv("LAYERLENS_BATCH_WINDOW_MS", str(window_ms))
    monkeypatch.setenv("LAYERLENS_BATCH_MAX", "4")
    settings = load_settings()
    assert (settings.batch_window_ms, settings.batch_max) == (window_ms, 4)
    assert Batcher(settings.batch_window_ms / 1000, settings.batch_max).enabled is (window_ms > 0)
