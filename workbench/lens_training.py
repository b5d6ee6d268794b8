"""Background training of tuned lenses: one job per (model, lens config), stoppable and resumable.

Owns the training step and loop of the affine lens (``lenses.AffineLens``; Belrose et al. 2023),
the pool of trainers (one per model and lens config in a process), and the lens checkpoint
files ``<cache>/tuned_lens/<model digest>-<config digest>.pt``, written atomically every few
steps, when stopped and when done: translators, Adam state, step count and loss history.
A stopped (or crashed) job resumes from its last checkpoint with the same numbers as an
uninterrupted run, because the chunk used at step ``i`` depends only on ``i`` and the seed.
Each step holds the model's lock, so other sessions' traces interleave between steps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from workbench import corpus, tracing
from workbench.analyses.base import request_digest
from workbench.analyses.tuned_lens import TunedLensConfig
from workbench.config import Settings
from workbench.errors import BadRequest, WorkbenchError
from workbench.lenses import AffineLens, decode


def _slot_groups(n_slots: int, seq: int, vocab: int, budget_bytes: int = 512 << 20) -> list[slice]:
    per_slot = max(1, seq * vocab * 4 * 4)  # logits, log-probs, and their gradients
    size = max(1, min(n_slots, budget_bytes // per_slot))
    return [slice(start, min(start + size, n_slots)) for start in range(0, n_slots, size)]


def training_step(model, translators: AffineLens, optimizer: torch.optim.Optimizer,
                  resid: torch.Tensor, grad_clip: float) -> float:
    """One optimiser step on one chunk's residuals (slot, seq, d_model); returns the mean KL (nats)
    summed over translated slots, i.e. the loss. Slots are processed in memory-bounded groups."""
    n_translated, seq, _ = resid[:-1].shape
    target = torch.log_softmax(decode(model, resid[-1]), dim=-1)  # (seq, vocab), no grad
    target_probs = target.exp()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for group in _slot_groups(n_translated, seq, target.shape[-1]):
        translated = translators(resid[group], group)
        logq = torch.log_softmax(decode(model, translated, grad=True), dim=-1)  # (group, seq, vocab)
        loss = (target_probs * (target - logq)).sum(-1).mean(-1).sum()  # sum over slots of mean KL
        loss.backward()
        total += loss.detach().item()
    torch.nn.utils.clip_grad_norm_(translators.parameters(), grad_clip)
    optimizer.step()
    return total


def make_optimizer(translators: AffineLens, config: TunedLensConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(translators.parameters(), lr=config.lr)


@dataclass(frozen=True)
class TrainingStatus:
    state: str  # "untrained" | "running" | "stopped" | "done" | "failed"
    step: int
    target_steps: int
    losses: tuple[float, ...]
    message: str = ""


def checkpoint_path(root: Path, model_digest: str, config: TunedLensConfig) -> Path:
    return root / "tuned_lens" / f"{model_digest[:16]}-{request_digest(config)[:16]}.pt"


def saved_status(path: Path) -> TrainingStatus:
    """The status recorded in a checkpoint file, without loading any model ("untrained" if none)."""
    if not path.exists():
        return TrainingStatus("untrained", 0, 0, ())
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        return TrainingStatus("failed", 0, 0, (), f"Unreadable checkpoint {path}: {exc}")
    step = int(state["step"])
    return TrainingStatus("stopped" if step else "untrained", step, step, tuple(state["losses"]))


class LensTrainer:
    """Trains the translators of one model for one config; ``chunks`` are training token-id lists,
    ``residuals(ids) -> (slot, seq, d_model)`` records the residual stream of one chunk."""

    def __init__(self, model, config: TunedLensConfig, path: Path, chunks: list[list[int]],
                 residuals: Callable[[torch.Tensor], torch.Tensor], checkpoint_every: int = 10):
        if not chunks:
            raise BadRequest("The training corpus produced no chunks; use a shorter chunk_tokens.")
        self.model, self.config, self.path = model, config, path
        self.chunks, self.residuals, self.checkpoint_every = chunks, residuals, checkpoint_every
        self._order = np.random.default_rng(config.seed).permutation(len(chunks))
        self._lock = threading.Lock()  # guards the fields below
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state, self._message, self._target = "untrained", "", 0
        self.translators = AffineLens(model.info.n_layers, model.info.d_model)
        self.optimizer = make_optimizer(self.translators, config)
        self.step, self.losses = 0, []
        self._load()

    # ------------------------------------------------------------------ state

    def status(self) -> TrainingStatus:
        with self._lock:
            state = self._state if self._state != "untrained" or self.step == 0 else "stopped"
            return TrainingStatus(state, self.step, max(self._target, self.step), tuple(self.losses), self._message)

    def snapshot(self) -> tuple[AffineLens, int]:
        """A copy of the current translators and the step they were trained to."""
        with self._lock:
            copy = AffineLens(self.model.info.n_layers, self.model.info.d_model)
            copy.load_state_dict(self.translators.state_dict())
            return copy, self.step

    # ------------------------------------------------------------------ control

    def start(self, target_steps: int) -> None:
        """Train in a background thread until ``target_steps`` (or ``stop``)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._target = max(self._target, target_steps)
                return
            self._stop.clear()
            self._target, self._state, self._message = target_steps, "running", ""
            self._thread = threading.Thread(target=self._run, args=(target_steps,), daemon=True,
                                            name=f"tuned-lens-{self.model.name}")
            self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        thread = self._thread
        if wait and thread is not None:
            thread.join()

    def train(self, target_steps: int) -> TrainingStatus:
        """Train in the calling thread until ``target_steps`` or a stop request."""
        with self._lock:
            self._target, self._state = target_steps, "running"
        try:
            while self.step < self._target and not self._stop.is_set():
                self._one_step()
                if self.step % self.checkpoint_every == 0:
                    self._save()
        except Exception as exc:
            with self._lock:
                self._state = "failed"
                self._message = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
            self._save()
            raise
        with self._lock:
            self._state = "done" if self.step >= self._target else "stopped"
        self._save()
        return self.status()

    def _run(self, target_steps: int) -> None:
        torch.set_num_threads(torch.get_num_threads())  # the process's setting, applied to this new thread
        try:
            self.train(target_steps)
        except Exception:  # recorded in the status; the thread must not die noisily
            pass

    def _one_step(self) -> None:
        ids = torch.tensor(self.chunks[self._order[self.step % len(self.chunks)]])
        resid = self.residuals(ids)[:, 1:]  # drop the first position (an attention sink)
        with self.model.lock:
            loss = training_step(self.model, self.translators, self.optimizer, resid,
                                            self.config.grad_clip)
        with self._lock:
            self.step += 1
            self.losses.append(loss)

    # ------------------------------------------------------------------ checkpoints

    def _save(self) -> None:
        with self._lock:
            state = {
                "model_digest": self.model.digest,
                "config": asdict(self.config),
                "step": self.step,
                "losses": list(self.losses),
                "translators": self.translators.state_dict(),
                "optimizer": self.optimizer.state_dict(),
            }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)  # readers see the old or the new checkpoint, never half of one

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as exc:
            raise WorkbenchError(f"The tuned-lens checkpoint {self.path} is unreadable ({exc}); "
                                 "delete it to train from scratch.") from exc
        if state["model_digest"] != self.model.digest or state["config"] != asdict(self.config):
            raise WorkbenchError(f"The tuned-lens checkpoint {self.path} belongs to another model or config.")
        self.translators.load_state_dict(state["translators"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.losses = int(state["step"]), list(state["losses"])


class TrainerPool:
    """One ``LensTrainer`` per (model, lens config) in this process, resumed from its checkpoint."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._trainers: dict[tuple[str, str], LensTrainer] = {}

    def trainer(self, model, config: TunedLensConfig) -> LensTrainer:
        key = (model.digest, request_digest(config))
        with self._lock:
            if key not in self._trainers:
                bos = model.tokenizer("").input_ids  # [<bos>] where the tokenizer adds one, else []
                chunks = [bos + c for c in corpus.chunks(model.tokenizer, config.corpus, "train", config.chunk_tokens)]
                self._trainers[key] = LensTrainer(
                    model, config, checkpoint_path(self.settings.cache_dir, model.digest, config), chunks,
                    residuals=lambda ids: tracing.residual_stream(model, ids).resid,
                )
            return self._trainers[key]

    def running(self, model_digest: str, config: TunedLensConfig) -> LensTrainer | None:
        """The trainer of this model and config if one exists in this process (no model needed)."""
        with self._lock:
            return self._trainers.get((model_digest, request_digest(config)))

    def stop_all(self) -> None:
        """Stop every running trainer of this process (each saves its checkpoint)."""
        with self._lock:
            trainers = list(self._trainers.values())
        for trainer in trainers:
            trainer.stop(wait=True)
