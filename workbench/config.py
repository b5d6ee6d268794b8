"""Frozen settings, read once from the environment.

Owns every tunable that is not part of an analysis request: where the cache
lives, which device and how many threads torch uses, and input limits.

Environment variables (all optional):
    LAYERLENS_CACHE_DIR     cache directory (default: ``cache/`` next to the package)
    LAYERLENS_MODELS_DIR    converted models (default: ``<cache dir>/models``); tests share it
    LAYERLENS_DEVICE        ``cpu`` (default), ``cuda`` or ``auto``
    LAYERLENS_THREADS       torch intra-op threads (default: torch's own choice)
    LAYERLENS_MAX_TOKENS    longest prompt accepted, in tokens (default 256)
    LAYERLENS_ALLOW_HUB     ``1`` lets hub ids be downloaded (default ``0``: offline)
    LAYERLENS_CACHE_MAX_MB  size limit of the cache's stored data in MB (default 2048; ``0``: no limit)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    )
