"""The model pool: every model this process has materialised or loaded, one load per model.

Owns the per-model locks: two sessions asking for the same model at once convert and load it
once, and loading one model never blocks requests for another. A model already materialised is
looked up without its lock, so a cached answer never waits for that model's load.
``LAYERLENS_THREADS`` is applied in every thread that asks for a model, since torch's thread
count is an OpenMP setting of the calling thread.

Models are kept by identity (``CatalogEntry.name``: a catalog name, a hub id or a directory's
resolved path), not by the short name they are shown by: two directories called ``model`` are two
models.
"""

from __future__ import annotations

import threading

import torch

from workbench.analyses.base import Progress, silent
from workbench.config import Settings
from workbench.models import catalog, loader
from workbench.models.catalog import LocalModel
from workbench.models.loader import LoadedModel


class ModelPool:
    """Materialised (``LocalModel``: directory + digest) and loaded (``LoadedModel``) models by name."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._local: dict[str, LocalModel] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._registry_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}

    def local(self, name: str, progress: Progress = silent) -> LocalModel:
        """The model's directory and digest, converting bundled weights on first use (no weights loaded)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        return self._materialized(catalog.resolve(name), progress)

    def _materialized(self, entry: catalog.CatalogEntry, progress: Progress) -> LocalModel:
        known = self._local.get(entry.name)  # no lock: a result-cache hit never waits for a load in progress
        if known is not None:
            return known
        with self._lock_for(entry.name):
            if entry.name not in self._local:
                self._local[entry.name] = catalog.materialize(entry, self.settings, progress)
            return self._local[entry.name]

    def load(self, name: str, progress: Progress = silent) -> LoadedModel:
        """The loaded model (loaded once per process)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        entry = catalog.resolve(name)
        local = self._materialized(entry, progress)
        with self._lock_for(entry.name):
            if entry.name not in self._loaded:
                progress(None, f"Loading {local.name}")
                try:
                    self._loaded[entry.name] = loader.load(local, self.settings)
                except Exception:
                    with self._registry_lock:  # a fixed directory is re-read (and re-digested) next time
                        self._local.pop(entry.name, None)
                    raise
            return self._loaded[entry.name]

    def _lock_for(self, name: str) -> threading.Lock:
        with self._registry_lock:
            return self._name_locks.setdefault(name, threading.Lock())
