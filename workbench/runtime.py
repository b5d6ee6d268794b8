"""The generic runtime: how any analysis runs on any model.

Owns the request flow, the same for every analysis in ``workbench.analyses.ANALYSES``:

    check input (no model) -> resolve + materialise the model (digest, no weights loaded)
    -> result cache lookup -> model pool (load once, per-model locks) -> analysis.run -> store

and ``Context``, what an analysis's ``run`` gets: its model (loaded on first use), the settings,
cached activation sets, other analyses' results on the same model (each cached on its own) and
the tuned-lens trainers. Only complete results are stored: a run that raises (or is cancelled
through its progress callback) leaves nothing behind.
"""

from __future__ import annotations

import numpy as np

from workbench import prompts
from workbench.analyses.base import Analysis, Progress, request_digest, request_json, silent
from workbench.config import Settings
from workbench.lens_training import TrainerPool
from workbench.models.catalog import LocalModel
from workbench.models.loader import LoadedModel
from workbench.models.pool import ModelPool
from workbench.store import ActivationKey, ResultKey, Store


class Runtime:
    """One per process: the store, the model pool and the trainer pool."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.pool = ModelPool(settings)
        self.trainers = TrainerPool(settings)

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
        result = analysis.run(Context(self, local, model_name, on_partial), request, progress)
        skipped = self.store.put_result(key, result, model_name=local.name, request_json=request_json(request))
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
