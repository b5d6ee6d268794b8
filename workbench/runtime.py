"""The generic runtime: how any analysis runs on any model.

Owns the request flow, the same for every analysis in ``workbench.analyses.ANALYSES``:

    check input (no model) -> resolve + materialise the model (digest, no weights loaded)
    -> result cache lookup -> model pool (load once, per-model locks) -> analysis.run -> store

A result-cache hit takes no model lock and no pool lock (a materialised model's digest is read
without waiting for a load in progress) and no store write lock, so cached pages answer while
long jobs hold the model. Concurrent misses of an analysis that declares ``run_batch`` (the
logit lens) are gathered per (model, analysis) by a ``Batcher``: the first request waits up to
``Settings.batch_window_ms`` (and, while an earlier batch of the same key still runs, until it
ends) for others, then all run in one ``run_batch`` call (one padded forward); each caller gets
its own result or its own error, and reports progress from its own thread.

and ``Context``, what an analysis's ``run`` gets: its model (loaded on first use), the settings,
cached activation sets, other analyses' results on the same model (each cached on its own), the
tuned-lens trainers and the fitted lenses (``lens_fitting.FitPool``: stored once, reused by every
session, fitted in the background or on first use). An analysis that reads an encoder-decoder model (the
DecoderLens) asks for ``ctx.encoder_decoder_model`` instead of ``ctx.model`` (which refuses such models for
every other analysis); the runtime loads each one once (``loader.load_encoder_decoder``). Only complete
results are stored: a run that raises (or is cancelled through its progress callback) leaves nothing behind.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from workbench import prompts
from workbench.analyses.base import Analysis, Progress, request_digest, request_json, silent
from workbench.config import Settings
from workbench.errors import WorkbenchError
from workbench.lens_fitting import FitConfig, FitPool, FittedLens
from workbench.lens_training import TrainerPool
from workbench.models import catalog, loader
from workbench.models.catalog import LocalModel
from workbench.models.loader import LoadedEncoderDecoder, LoadedModel
from workbench.models.pool import ModelPool
from workbench.store import ActivationKey, ResultKey, Store

log = logging.getLogger(__name__)


class Runtime:
    """One per process: the store, the model pool, the trainer pool and the fitted-lens pool."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.pool = ModelPool(settings)
        self.trainers = TrainerPool(settings)
        self.fits = FitPool(settings)
        self.batcher = Batcher(settings.batch_window_ms / 1000.0, settings.batch_max)
        self._encoder_decoders: dict[str, LoadedEncoderDecoder] = {}  # by catalog identity, loaded once
        self._encoder_decoder_lock = threading.Lock()

    def encoder_decoder_model(self, model_name: str, progress: Progress = silent) -> LoadedEncoderDecoder:
        """The loaded encoder-decoder model (once per process); a decoder-only one is refused by name."""
        identity = catalog.resolve(model_name).name
        with self._encoder_decoder_lock:
            if identity not in self._encoder_decoders:
                local = self.pool.local(model_name, progress)
                progress(None, f"Loading {local.name}")
                self._encoder_decoders[identity] = loader.load_encoder_decoder(local, self.settings)
            return self._encoder_decoders[identity]

    def run(self, analysis: Analysis, model_name: str, request, progress: Progress = silent, on_partial=None):
        """``analysis``'s result for ``request`` on the model: from the store, or computed and stored.

        ``on_partial(result)``, if given, receives the partial results an analysis reports while it
        runs (e.g. activation patching block by block, unfinished cells NaN), for views that fill in."""
        analysis.check_request(request, self.settings)
        local = self.pool.local(model_name, progress)
        key = ResultKey(analysis.name, analysis.version, local.digest, request_digest(request))
        cached = self.store.get_result(key, analysis.Result)
        if cached is not None:
            return cached
        ctx = Context(self, local, model_name, on_partial)
        if analysis.run_batch is not None and self.batcher.enabled and local.remote is None:
            result = self.batcher.run((local.identity or local.name, local.digest, analysis.name, analysis.version),
                                      ctx, analysis, request, progress)
        else:
            result = analysis.run(ctx, request, progress)
        skipped = self.store.put_result(key, result, model_name=local.identity or local.name,
                                        request_json=request_json(request))
        if skipped is not None:  # too large for the cache's limit: used now, not stored
            progress(1.0, skipped.message)
        return result

    def activations(self, model_digest: str, site: str, content_digest: str, compute) -> np.ndarray:
        """The stored activation set of a model (by ``site`` and the digest of its inputs), or
        ``compute()`` it and store it: a new option on the same inputs needs no model run."""
        key = ActivationKey(model_digest, content_digest, site)
        cached = self.store.get_activations(key)
        if cached is not None:
            return cached
        values = compute()
        self.store.put_activations(key, values)
        return values


class Context:
    """What ``Analysis.run`` may use: one model of the runtime, and the runtime's caches."""

    def __init__(self, runtime: Runtime, local: LocalModel, model_name: str, on_partial=None):
        self.runtime = runtime
        self.local = local
        self.model_name = model_name  # as the caller named it (catalog name, directory or hub id)
        self._on_partial = on_partial

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def name(self) -> str:
        """The model's display name."""
        return self.local.name

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loaded on first use)."""
        return self.runtime.pool.load(self.model_name)

    @property
    def encoder_decoder_model(self) -> LoadedEncoderDecoder:
        """The loaded encoder-decoder model (T5, BART), for analyses that read both stacks."""
        return self.runtime.encoder_decoder_model(self.model_name)

    def encode(self, text: str) -> prompts.EncodedPrompt:
        """``text`` checked and tokenised for this model (token limit included)."""
        return prompts.encode(self.model, text, self.settings)

    def run(self, analysis: Analysis, request, progress: Progress = silent, on_partial=None):
        """Another analysis's result on the same model, cached on its own."""
        return self.runtime.run(analysis, self.model_name, request, progress, on_partial)

    def partial(self, result) -> None:
        """Report a partial result (same type, unfinished parts NaN) to whoever watches this run."""
        if self._on_partial is not None:
            self._on_partial(result)

    def activations(self, site: str, content_digest: str, compute) -> np.ndarray:
        """A stored activation set of this model (keyed by ``site`` and the digest of its inputs),
        or ``compute()`` it and store it."""
        return self.runtime.activations(self.local.digest, site, content_digest, compute)

    def trainer(self, config, progress: Progress = silent):
        """The (one per process) tuned-lens trainer of ``config`` for this model."""
        return self.runtime.trainers.trainer(self.runtime.pool.load(self.model_name, progress), config)

    def fitted_lens(self, config: FitConfig, progress: Progress = silent) -> FittedLens:
        """The stored fitted lens of ``config`` for this model; else, if a fit of it is running (a
        background job or another session), that fit's lens once it ends (its progress relayed);
        else one fitted now in this thread and stored. ``progress`` may raise to cancel."""
        return self.runtime.fits.fitted(self.runtime.pool.load(self.model_name, progress), config, progress)


# ------------------------------------------------------------------------------ batching


@dataclass(eq=False)
class _Job:
    """One caller's request in a batch; the leader answers it through ``inbox`` (progress messages,
    then one outcome)."""

    request: object
    ctx: Context  # the caller's own (its partial-result watcher, for a run alone)
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


_PROGRESS, _DONE = "progress", "done"
_ALONE = object()  # a batch's answer meaning: run your request yourself


@dataclass(eq=False)
class _Batch:
    jobs: list[_Job] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Gathers concurrent requests of one key (model name, model digest, analysis name, version)
    into one ``analysis.run_batch`` call.

    The first request of a key opens a batch and leads it: it waits ``window_s`` (less if the batch
    fills up to ``limit``), then for the key's previous batch to finish, closes the batch and runs
    it; requests arriving meanwhile join it (a full batch makes the next arrival lead a new one).
    A batch of one runs ``analysis.run`` as if there were no batcher. Equal requests are computed
    once. If ``run_batch`` fails with a ``WorkbenchError`` every caller gets it; any other failure
    makes every caller run its request alone, so a batching bug costs time, never answers.
    ``batches`` counts the batches run, ``batched`` the requests they answered (for tests and benches)."""

    def __init__(self, window_s: float, limit: int):
        self.window_s = max(0.0, float(window_s))
        self.limit = max(1, int(limit))
        self._lock = threading.Lock()  # guards _open and _turns; held only for bookkeeping
        self._open: dict[tuple, _Batch] = {}
        self._turns: dict[tuple, threading.Lock] = {}
        self.batches = 0
        self.batched = 0

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def run(self, key: tuple, ctx: Context, analysis: Analysis, request, progress: Progress):
        job = _Job(request, ctx)
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None or len(batch.jobs) >= self.limit
            if leader:
                batch = self._open[key] = _Batch()
            batch.jobs.append(job)
            if len(batch.jobs) >= self.limit:
                batch.full.set()
            turn = self._turns.setdefault(key, threading.Lock())
        if not leader:
            return self._follow(job, analysis, progress)
        try:
            batch.full.wait(self.window_s)
            turn.acquire()  # one batch of a key at a time; arrivals join the open batch while the previous one runs
        except BaseException:  # the leader was interrupted while gathering: its followers run alone
            jobs = self._close(key, batch)
            for job in jobs[1:]:
                job.inbox.put((_DONE, _ALONE))
            raise
        try:
            jobs = self._close(key, batch)
            if len(jobs) == 1:
                return analysis.run(ctx, request, progress)  # alone: exactly the unbatched path
            return self._lead(jobs, analysis, progress)
        finally:
            turn.release()

    def _close(self, key: tuple, batch: _Batch) -> list[_Job]:
        """Close ``batch`` to newcomers; its jobs, the leader first."""
        with self._lock:
            if self._open.get(key) is batch:
                del self._open[key]
            return list(batch.jobs)  # closed: nobody appends to a batch that is no longer open

    def _lead(self, jobs: list[_Job], analysis: Analysis, progress: Progress):
        """Run the batch (the leader is ``jobs[0]``), answer every follower, return the leader's result."""
        ctx = jobs[0].ctx
        leader_stopped: list[BaseException] = []
        answered = False

        def report(fraction: float | None, message: str) -> None:
            for job in jobs[1:]:
                job.inbox.put((_PROGRESS, (fraction, message)))
            if not leader_stopped:
                try:
                    progress(fraction, message)
                except BaseException as exc:  # the leader's caller gave up: the others still get answers
                    leader_stopped.append(exc)

        try:
            digests = [request_digest(job.request) for job in jobs]
            unique: dict[str, int] = {}  # digest -> index of its request in the batch
            requests = []
            for digest, job in zip(digests, jobs, strict=True):
                if digest not in unique:
                    unique[digest] = len(requests)
                    requests.append(job.request)
            try:
                shared = Context(ctx.runtime, ctx.local, ctx.model_name)  # a batch reports no partial results
                outcomes = list(analysis.run_batch(shared, requests, report))
                if len(outcomes) != len(requests):
                    raise RuntimeError(f"{analysis.name}.run_batch returned {len(outcomes)} results "
                                       f"for {len(requests)} requests")
                with self._lock:
                    self.batches += 1
                    self.batched += len(jobs)
            except WorkbenchError as exc:
                outcomes = [exc] * len(requests)
            except Exception:  # a batching failure: every caller runs its own request alone
                log.exception("%s.run_batch failed on %d requests; each runs alone", analysis.name, len(requests))
                outcomes = [_ALONE] * len(requests)
            mine = outcomes[unique[digests[0]]]
            for digest, job in zip(digests[1:], jobs[1:], strict=True):
                job.inbox.put((_DONE, outcomes[unique[digest]]))
            answered = True
        finally:
            if not answered:  # the leader itself was interrupted: nobody waits forever
                for job in jobs[1:]:
                    job.inbox.put((_DONE, _ALONE))
        if leader_stopped:
            raise leader_stopped[0]
        return _outcome(mine, jobs[0], analysis, progress)

    @staticmethod
    def _follow(job: _Job, analysis: Analysis, progress: Progress):
        """Wait for the leader's answer, relaying its progress messages from this (the caller's) thread."""
        while True:
            kind, value = job.inbox.get()
            if kind == _PROGRESS:
                progress(*value)  # may raise (the caller gave up): the batch's result is then dropped
            else:
                return _outcome(value, job, analysis, progress)


def _outcome(value, job: _Job, analysis: Analysis, progress: Progress):
    """A caller's entry of a batch: its result, its error raised, or its request run alone."""
    if value is _ALONE:
        return analysis.run(job.ctx, job.request, progress)
    if isinstance(value, BaseException):
        raise value
    return value
