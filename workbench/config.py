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

Environment variables (all optional):
    LAYERLENS_CACHE_DIR     cache directory (default: ``cache/`` next to the package)
    LAYERLENS_MODELS_DIR    converted models (default: ``<cache dir>/models``); tests share it
    LAYERLENS_DEVICE        ``cpu`` (default), ``cuda`` or ``auto``
    LAYERLENS_THREADS       torch intra-op threads (default: torch's own choice)
    LAYERLENS_MAX_TOKENS    longest prompt accepted, in tokens (default 256)
    LAYERLENS_ALLOW_HUB     ``1`` lets hub ids be downloaded (default ``0``: offline)
    LAYERLENS_CACHE_MAX_MB  size limit of the cache's stored data in MB (default 2048; ``0``: no limit);
                            entries over 90% of it are not cached; the file stays under 2x it + 32 MB
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
    cache_max_mb: int = 2048  # least recently used entries are evicted above it; 0 = no limit
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
        cache_max_mb=_env_int("LAYERLENS_CACHE_MAX_MB", 2048) or 0,
        remote=os.environ.get("LAYERLENS_REMOTE", "0") == "1",
        ndif_api_key=(os.environ.get("LAYERLENS_NDIF_API_KEY") or os.environ.get("NDIF_API_KEY") or "").strip()
        or None,
        ndif_host=(os.environ.get("LAYERLENS_NDIF_HOST") or os.environ.get("NDIF_HOST") or NDIF_DEFAULT_HOST).strip(),
    )
