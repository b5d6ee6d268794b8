"""Fitted lenses, stored and reused across sessions: closed-form and averaged lenses fitted once.

Owns the lenses that are *fitted* from a corpus rather than trained step by step:

* ``linear_shortcut``: Din, Karidi, Choshen & Geva (2023), "Jump to Conclusions: Short-Cutting
  Transformers With Linear Transformations": per slot the least-squares affine map to the last
  slot, in closed form (``lenses.fit_linear_shortcut``);
* ``jacobian``: the Jacobian lens of anthropics/jacobian-lens: per slot the corpus-averaged
  Jacobian ``J_l = E[d h_L / d h_l]``, decoded as ``Unembed(J_l h_l)`` (``lenses.fit_jacobian_lens``);

each as a ``lenses.AffineLens`` so it decodes and compares like the tuned lens. A lens is
identified by the model's content digest and its ``FitConfig`` and stored in
``<cache dir>/lenses/<kind>/<model digest>-<config digest>.pt`` (written atomically: a temporary
file, then ``os.replace``; read with ``torch.load(weights_only=True)``), like the tuned-lens
checkpoints of ``lens_training``.

``FitPool`` (one per process, ``Runtime.fits``) holds one ``FitJob`` per (model, config): a fit
runs in the foreground (``FitPool.fitted``, the caller's progress and cancellation) or in a
background thread (``FitJob.start`` / ``stop``); a caller asking for a lens whose fit is already
running waits for it (and sees its progress) instead of fitting twice. Every forward pass holds
the model's lock, so other sessions interleave. A stopped or failed fit leaves no file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from workbench import corpus, tracing
from workbench.config import Settings
from workbench.errors import BadRequest, WorkbenchError
from workbench.lenses import AffineLens, fit_jacobian_lens, fit_linear_shortcut

FIT_KINDS = ("linear_shortcut", "jacobian")
MAX_FIT_CHUNKS = 512
MAX_JACOBIAN_CHUNKS = 64  # each costs d_model / dim_batch backward passes
LINEAR_BATCH = 8  # fitting chunks per forward pass of the linear shortcut
JACOBIAN_DIM_BATCH = 16  # output dimensions per backward pass of the Jacobian lens
JACOBIAN_DEFAULT_CHUNKS = 2  # SmolLM2, one thread: 309 CPU s for 2 x 64 tokens (bench_lens_fitting), vs 11 s
# for the linear shortcut's 24 x 64; held-out mean KL over slots: logit lens 16.9, Jacobian lens 7.7,
# linear shortcut 2.2 nats (top-1 agreement 0.16, 0.12, 0.36)

Progress = Callable[[float | None, str], None]


def _silent(_fraction, _message) -> None:
    return None


@dataclass(frozen=True)
class FitConfig:
    """What identifies a fitted lens besides the model: same config, same file."""

    kind: str
    corpus: str = "python-reference"
    chunk_tokens: int = 64
    fit_chunks: int = 24

    def __post_init__(self):
        if self.kind not in FIT_KINDS:
            raise BadRequest(f"Unknown lens kind {self.kind!r}. Kinds: {', '.join(FIT_KINDS)}.")
        if self.corpus not in corpus.CORPORA:
            raise BadRequest(f"Unknown corpus {self.corpus!r}. Corpora: {', '.join(corpus.CORPORA)}.")
        if not isinstance(self.chunk_tokens, int) or not 8 <= self.chunk_tokens <= 512:
            raise BadRequest("chunk_tokens must be a whole number between 8 and 512.")
        most = MAX_JACOBIAN_CHUNKS if self.kind == "jacobian" else MAX_FIT_CHUNKS
        if not isinstance(self.fit_chunks, int) or not 1 <= self.fit_chunks <= most:
            raise BadRequest(f"fit_chunks must be a whole number between 1 and {most} for the {self.kind} lens.")


def default_config(kind: str) -> FitConfig:
    """The default config of a kind: the Jacobian lens is fitted on fewer chunks (it costs
    ``d_model / dim_batch`` backward passes per chunk where the linear shortcut costs one forward)."""
    if kind == "jacobian":
        return FitConfig(kind, fit_chunks=JACOBIAN_DEFAULT_CHUNKS)
    return FitConfig(kind)


def config_digest(config: FitConfig) -> str:
    """Content digest of a config (sha256 of its canonical JSON), equal in every process."""
    return hashlib.sha256(f"FitConfig:{json.dumps(asdict(config), sort_keys=True)}".encode()).hexdigest()


def lens_path(cache_dir: Path, model_digest: str, config: FitConfig) -> Path:
    return Path(cache_dir) / "lenses" / config.kind / f"{model_digest[:16]}-{config_digest(config)[:16]}.pt"


@dataclass
class FittedLens:
    lens: AffineLens
    config: FitConfig
    seconds: float  # fitting wall seconds
    cpu_seconds: float  # CPU seconds of the fitting thread (torch's worker threads not counted)
    tokens: int  # fitting tokens (positions the fit averaged or regressed over)


@dataclass
class FitStatus:
    state: str  # "missing" | "fitting" | "stored" | "failed" | "stopped"
    fraction: float
    message: str
    seconds: float
    tokens: int


# ------------------------------------------------------------------------------ storage


def save_lens(path: Path, model_digest: str, fitted: FittedLens) -> None:
    """Write atomically: readers see no file or the whole file, never half of one."""
    state = {
        "model_digest": model_digest,
        "config": asdict(fitted.config),
        "weight": fitted.lens.weight.detach().clone(),
        "bias": fitted.lens.bias.detach().clone(),
        "seconds": float(fitted.seconds),
        "cpu_seconds": float(fitted.cpu_seconds),
        "tokens": int(fitted.tokens),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_lens(path: Path, model_digest: str, config: FitConfig) -> FittedLens | None:
    """The stored lens of this model and config, or None when there is none (safe load: tensors only)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise WorkbenchError(f"The stored lens {path.name} is unreadable ({type(exc).__name__}); "
                             "delete it to fit it again.") from None
    if state.get("model_digest") != model_digest or state.get("config") != asdict(config):
        raise WorkbenchError(f"The stored lens {path.name} belongs to another model or config; delete it.")
    weight, bias = state["weight"], state["bias"]
    lens = AffineLens(weight.shape[0], weight.shape[-1])
    with torch.no_grad():
        lens.weight.copy_(weight)
        lens.bias.copy_(bias)
    return FittedLens(lens, config, float(state["seconds"]), float(state["cpu_seconds"]), int(state["tokens"]))


def stored_status(path: Path) -> FitStatus:
    """What the file says, without loading any model."""
    if not path.exists():
        return FitStatus("missing", 0.0, "", 0.0, 0)
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        return FitStatus("failed", 0.0, f"Unreadable stored lens ({type(exc).__name__}).", 0.0, 0)
    return FitStatus("stored", 1.0, "", float(state["seconds"]), int(state["tokens"]))


# ------------------------------------------------------------------------------ fitting


def fit_chunks(model, config: FitConfig) -> list[torch.Tensor]:
    """The config's training chunks, each after the tokenizer's own prefix (<bos> or nothing)."""
    bos = model.tokenizer("").input_ids
    chunks = [torch.tensor(bos + c) for c in corpus.chunks(model.tokenizer, config.corpus, "train",
                                                           config.chunk_tokens, config.fit_chunks)]
    if not chunks:
        raise BadRequest("The fitting corpus produced no chunks; use a shorter chunk_tokens.")
    return chunks


def _all_slots(_unembed, states, _real):
    """Every residual slot, (batch, slot, seq, d_model), for ``tracing.reduce_slots_batch``: the
    fitting chunks have equal lengths, so no position is padding."""
    return torch.stack(states, dim=1)


def residual_streams(model, chunks: list[torch.Tensor], progress: Progress = _silent, what: str = "Fitting",
                     counter: list[int] | None = None):
    """The residual streams (slot, positions, d_model) of ``chunks``, ``LINEAR_BATCH`` equal-length chunks
    per forward pass, the first position of every chunk (an attention sink) left out, as in
    tuned-lens training; ``counter[0]`` adds up the positions yielded."""
    done = 0
    for length in sorted({len(c) for c in chunks}):
        same = [c for c in chunks if len(c) == length]
        for start in range(0, len(same), LINEAR_BATCH):
            batch = torch.stack(same[start:start + LINEAR_BATCH])
            progress(done / len(chunks), f"{what}: chunks {done + 1}-{done + len(batch)} of {len(chunks)}")
            states = tracing.reduce_slots_batch(model, batch.tolist(), _all_slots)[:, :, 1:]  # no sink position
            done += len(batch)
            if counter is not None:
                counter[0] += states.shape[0] * states.shape[2]
            yield states.transpose(0, 1).reshape(states.shape[1], -1, states.shape[-1])


def fit_linear(model, config: FitConfig, progress: Progress = _silent) -> tuple[AffineLens, int]:
    """The linear shortcut on the config's chunks (``residual_streams``)."""
    tokens = [0]
    streams = residual_streams(model, fit_chunks(model, config), progress, "Fitting the linear shortcuts", tokens)
    lens = fit_linear_shortcut(streams, model.info.n_layers + 1, model.info.d_model)
    return lens, tokens[0]


def fit_jacobian(model, config: FitConfig, progress: Progress = _silent) -> tuple[AffineLens, int]:
    return fit_jacobian_lens(model, fit_chunks(model, config), JACOBIAN_DIM_BATCH, progress=progress)


FITTERS: dict[str, Callable] = {"linear_shortcut": fit_linear, "jacobian": fit_jacobian}


def fit(model, config: FitConfig, progress: Progress = _silent) -> FittedLens:
    """Fit the lens now, in this thread (``progress`` may raise to cancel)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    lens, tokens = FITTERS[config.kind](model, config, progress)
    return FittedLens(lens, config, time.perf_counter() - wall, time.thread_time() - cpu, tokens)


class _Stopped(Exception):
    """Raised in a fit's progress callback when its job is asked to stop."""


class FitJob:
    """The fit of one lens config on one model, stored at ``path``; at most one fit runs at a time."""

    def __init__(self, model, config: FitConfig, path: Path):
        self.model, self.config, self.path = model, config, path
        self._lock = threading.Condition()  # guards the fields below; notified when a fit ends
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._status = FitStatus("missing", 0.0, "", 0.0, 0)
        self._started = 0.0

    # ------------------------------------------------------------------ state

    def status(self) -> FitStatus:
        with self._lock:
            if self._running:
                return replace(self._status, seconds=time.perf_counter() - self._started)
            last = self._status
        stored = stored_status(self.path)
        if stored.state == "stored" or last.state == "missing":
            return stored
        return last  # "failed" or "stopped": no file

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    # ------------------------------------------------------------------ control

    def start(self) -> FitStatus:
        """Fit in a background thread unless the lens is stored or a fit of it runs already."""
        with self._lock:
            if self._running or self.path.exists():
                return self.status()
            self._begin()
            self._thread = threading.Thread(target=self._background, daemon=True,
                                            name=f"fit-{self.config.kind}-{self.model.name}")
            self._thread.start()
        return self.status()

    def stop(self, wait: bool = True) -> FitStatus:
        """Ask the running fit (background or foreground) to stop; it leaves no file."""
        with self._lock:
            if self._running:
                self._stop.set()
            thread = self._thread
        if wait:
            if thread is not None and thread is not threading.current_thread():
                thread.join()
            with self._lock:
                while self._running:
                    self._lock.wait(0.5)
        return self.status()

    def fitted(self, progress: Progress = _silent) -> FittedLens:
        """The stored lens; else the running fit's lens once it ends (its progress relayed to
        ``progress``); else a fit in this thread. ``progress`` may raise: a caller that waits stops
        waiting (the fit goes on), a caller that fits stops its fit (no file)."""
        while True:
            stored = load_lens(self.path, self.model.digest, self.config)
            if stored is not None:
                return stored
            with self._lock:
                mine = not self._running
                if mine:
                    self._begin()
            if mine:
                return self._fit(progress)
            self._wait(progress)
            with self._lock:
                failed = self._status.state == "failed" and not self.path.exists()
                message = self._status.message
            if failed:
                raise WorkbenchError(f"Fitting the {self.config.kind} lens failed: {message}")
            # stored now (loaded above on the next turn), or stopped by someone: fit it here

    # ------------------------------------------------------------------ internals

    def _begin(self) -> None:  # with self._lock held
        self._running = True
        self._stop.clear()
        self._started = time.perf_counter()
        self._status = FitStatus("fitting", 0.0, "Starting", 0.0, 0)

    def _wait(self, progress: Progress) -> None:
        while True:
            with self._lock:
                if not self._running:
                    return
                self._lock.wait(0.25)
                status = self._status
                running = self._running
            if running:
                progress(status.fraction, f"Waiting for the running fit: {status.message}")

    def _fit(self, progress: Progress) -> FittedLens:
        cancelled = []  # the caller's progress raised: a cancellation, not a failure

        def report(fraction: float | None, message: str) -> None:
            if self._stop.is_set():
                raise _Stopped()
            with self._lock:
                self._status = replace(self._status, fraction=self._status.fraction if fraction is None else
                                       float(fraction), message=message)
                self._lock.notify_all()
            try:
                progress(fraction, message)
            except BaseException:
                cancelled.append(True)
                raise

        outcome = FitStatus("failed", 0.0, "", 0.0, 0)
        try:
            fitted = fit(self.model, self.config, report)
            if self._stop.is_set():
                raise _Stopped()
            save_lens(self.path, self.model.digest, fitted)
            outcome = FitStatus("stored", 1.0, "", fitted.seconds, fitted.tokens)
            return fitted
        except _Stopped:
            outcome = FitStatus("stopped", 0.0, "Stopped; nothing was stored.", 0.0, 0)
            raise WorkbenchError(f"The {self.config.kind} lens fit was stopped; nothing was stored.") from None
        except BaseException as exc:
            if cancelled or not isinstance(exc, Exception):
                outcome = FitStatus("stopped", 0.0, "Cancelled; nothing was stored.", 0.0, 0)
            else:
                message = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
                outcome = FitStatus("failed", 0.0, message, 0.0, 0)
            raise
        finally:
            with self._lock:
                self._status = outcome
                self._running = False
                self._lock.notify_all()

    def _background(self) -> None:
        torch.set_num_threads(torch.get_num_threads())  # the process's setting, applied to this new thread
        try:
            self._fit(_silent)
        except Exception:  # recorded in the status; the thread must not die noisily
            pass


class FitPool:
    """One ``FitJob`` per (model, fit config) in this process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], FitJob] = {}

    def path(self, model_digest: str, config: FitConfig) -> Path:
        return lens_path(self.settings.cache_dir, model_digest, config)

    def job(self, model, config: FitConfig) -> FitJob:
        key = (model.digest, config_digest(config))
        with self._lock:
            if key not in self._jobs:
                self._jobs[key] = FitJob(model, config, self.path(model.digest, config))
            return self._jobs[key]

    def existing(self, model_digest: str, config: FitConfig) -> FitJob | None:
        """The job of this model and config if this process has one (no model needed)."""
        with self._lock:
            return self._jobs.get((model_digest, config_digest(config)))

    def status(self, model_digest: str, config: FitConfig) -> FitStatus:
        job = self.existing(model_digest, config)
        return job.status() if job is not None else stored_status(self.path(model_digest, config))

    def fitted(self, model, config: FitConfig, progress: Progress = _silent) -> FittedLens:
        """The stored lens, else the running fit's, else one fitted now in this thread."""
        stored = load_lens(self.path(model.digest, config), model.digest, config)
        if stored is not None:
            return stored
        return self.job(model, config).fitted(progress)

    def stop_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop(wait=True)
