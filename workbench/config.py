"""Frozen settings, read once from the environment.

Owns every tunable that is not part of an analysis request: where the cache
lives, which device and how many threads torch uses, input limits, and whether
the HuggingFace hub may be reached. This is the only module of the workbench
that reads the environment (``load_settings``); importing any module changes no
environment variable. The hub rule (``Settings.hub_allowed``): offline unless
the user allowed downloads (``allow_hub``) or remote runs (``remote``, which read
hub configs but never weights); ``catalog.hub_guard`` applies it while a model
is materialised or loaded, so a missing local path never becomes a hub lookup.
(huggingface_hub itself still honours ``HF_HUB_OFFLINE=1`` set by the user.)

The model-access rule (``Settings.shared_model_roots``, applied by ``catalog.check_linked``): a
model named by a shared link or an export bundle opens only if it is a catalog model, a hub id
(then the hub rule above decides) or a directory under one of the model roots, checked after
symlinks and ``..`` are resolved. A path the user types (the sidebar, ``--model``, a script) opens
wherever it is. Weights load from safetensors files only unless ``allow_pickle``: a pickled
checkpoint (``pytorch_model.bin``) can run code when it is read.

Environment variables (all optional):
    LAYERLENS_CACHE_DIR     cache directory (default: ``cache/`` next to the package)
    LAYERLENS_MODELS_DIR    converted models (default: ``<cache dir>/models``); tests share it
    LAYERLENS_DEVICE        ``cpu`` (default), ``cuda`` or ``auto``
    LAYERLENS_THREADS       torch intra-op threads (default: torch's own choice)
    LAYERLENS_MAX_TOKENS    longest prompt accepted, in tokens (default 256)
    LAYERLENS_ALLOW_HUB     ``1`` lets hub ids be downloaded (default ``0``: offline)
    LAYERLENS_MODEL_ROOTS   directories (separated by ``os.pathsep``, ``:`` on Linux) whose model
                            directories shared links and bundles may open (default: the models dir)
    LAYERLENS_ALLOW_PICKLE  ``1`` also loads pickled weights (``pytorch_model.bin``; default ``0``:
                            safetensors only)
    LAYERLENS_CACHE_MAX_MB  size limit of the cache's stored data in MB (default 2048; ``0``: no limit);
                            entries over 90% of it are not cached; the file stays under 2x it + 32 MB
    LAYERLENS_BATCH_WINDOW_MS  how long a request of a batching analysis (the logit lens) waits for
                            others on the same model to share one padded forward (default 20; ``0``:
                            no batching, every request runs alone)
    LAYERLENS_BATCH_MAX     most requests in one batched forward (default 16)
    LAYERLENS_REMOTE        ``1`` runs hub ids remotely on NDIF through nnsight (default ``0``)
    NDIF_API_KEY            the NDIF API key for remote runs (or LAYERLENS_NDIF_API_KEY)
    NDIF_HOST               the NDIF API address (default ``https://api.ndif.us``; or LAYERLENS_NDIF_HOST)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NDIF_DEFAULT_HOST = "https://api.ndif.us"


@dataclass(frozen=True)
class Settings:
    cache_dir: Path = PROJECT_ROOT / "cache"
    models_dir_override: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    max_prompt_tokens: int = 256
    max_prompt_chars: int = 8000
    allow_hub: bool = False
    model_roots: tuple[Path, ...] = ()  # where linked/bundled model directories may be; () = the models dir
    allow_pickle: bool = False  # load pickled weights (pytorch_model.bin) too; they can run code when read
    cache_max_mb: int = 2048  # least recently used entries are evicted above it; 0 = no limit
    batch_window_ms: float = 20.0  # gather window of batched requests (workbench.runtime); 0 = no batching
    batch_max: int = 16  # most requests in one batched forward
    remote: bool = False  # hub ids run on NDIF (workbench.remote); local models still run here
    ndif_api_key: str | None = field(default=None, repr=False)  # never printed
    ndif_host: str = NDIF_DEFAULT_HOST

    @property
    def hub_allowed(self) -> bool:
        """Whether loading may reach the HuggingFace hub: downloads allowed, or remote runs on."""
        return self.allow_hub or self.remote

    @property
    def models_dir(self) -> Path:
        return self.models_dir_override or self.cache_dir / "models"

    @property
    def shared_model_roots(self) -> tuple[Path, ...]:
        """The directories under which a shared link or a bundle may name a model directory."""
        return tuple(self.model_roots) or (self.models_dir,)

    @property
    def database_path(self) -> Path:
        return self.cache_dir / "workbench.duckdb"

    @property
    def cache_max_bytes(self) -> int | None:
        return self.cache_max_mb * 1024 * 1024 if self.cache_max_mb > 0 else None

    def with_cache_dir(self, cache_dir: Path) -> Settings:
        return replace(self, cache_dir=Path(cache_dir))


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_paths(name: str) -> tuple[Path, ...]:
    raw = os.environ.get(name, "")
    return tuple(Path(part.strip()).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip())


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def load_settings() -> Settings:
    """Settings from the environment, with defaults for whatever is unset."""
    return Settings(
        cache_dir=Path(os.environ.get("LAYERLENS_CACHE_DIR", PROJECT_ROOT / "cache")).resolve(),
        models_dir_override=Path(os.environ["LAYERLENS_MODELS_DIR"]).resolve()
        if os.environ.get("LAYERLENS_MODELS_DIR")
        else None,
        device=os.environ.get("LAYERLENS_DEVICE", "cpu"),
        threads=_env_int("LAYERLENS_THREADS", None),
        max_prompt_tokens=_env_int("LAYERLENS_MAX_TOKENS", 256) or 256,
        allow_hub=os.environ.get("LAYERLENS_ALLOW_HUB", "0") == "1",
        model_roots=_env_paths("LAYERLENS_MODEL_ROOTS"),
        allow_pickle=os.environ.get("LAYERLENS_ALLOW_PICKLE", "0") == "1",
        cache_max_mb=_env_int("LAYERLENS_CACHE_MAX_MB", 2048) or 0,
        batch_window_ms=max(0.0, _env_float("LAYERLENS_BATCH_WINDOW_MS", 20.0)),
        batch_max=max(1, _env_int("LAYERLENS_BATCH_MAX", 16) or 1),
        remote=os.environ.get("LAYERLENS_REMOTE", "0") == "1",
        ndif_api_key=(os.environ.get("LAYERLENS_NDIF_API_KEY") or os.environ.get("NDIF_API_KEY") or "").strip()
        or None,
        ndif_host=(os.environ.get("LAYERLENS_NDIF_HOST") or os.environ.get("NDIF_HOST") or NDIF_DEFAULT_HOST).strip(),
    )
