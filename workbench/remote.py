"""Remote execution on NDIF (the National Deep Inference Fabric) through nnsight.

Owns everything about running traces on a model that lives on NDIF instead of this machine:

* the opt-in (``Settings.remote``, ``LAYERLENS_REMOTE=1``), the API key and the host;
* the checks that run before any remote model is built or traced, each failing fast with a
  ``RemoteUnavailable`` that says what to do: an API key is set, the NDIF host accepts a TCP
  connection within ``CONNECT_TIMEOUT_S``, NDIF lists the model as deployed;
* fetching a hosted model's config and tokenizer (never its weights) and building the
  weightless nnsight model (``dispatch=False``: modules on the meta device) that traces are
  written against;
* ``trace_options``: the keyword arguments every trace in ``workbench.tracing`` passes, so
  one traced block runs here or on NDIF unchanged (no second code path per analysis).

What nnsight 0.8 sends: ``RemoteBackend`` serialises the traced ``with`` block as its source
text plus the locals/globals it reads (``RequestModel.serialize``); modules and the
interleaver travel as persistent ids (``Module:<path>``) that NDIF resolves against its own
copy of the model, named by the request's ``model_key``. Results come back as the values the
block saved. Code that needs the weights here (plain PyTorch hooks, weight reads, decoding
with the local unembedding) cannot run remotely: ``LoadedModel.hf_model`` raises
``RemoteUnsupported`` for a remote model.
"""

from __future__ import annotations

import functools
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from workbench.config import Settings
from workbench.errors import RemoteUnavailable

CONNECT_TIMEOUT_S = 3.0  # a reachable NDIF answers a TCP connect in well under a second
STATUS_TIMEOUT_S = 10.0  # the deployment list
# Files needed to build the model skeleton and tokenize: never weights.
METADATA_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
]
NOTE = "Runs remotely on NDIF: the weights stay on NDIF's servers; only traced code and saved values travel."


@dataclass(frozen=True)
class RemoteTarget:
    """Where a remote model's traces go: NDIF's name for the model and how to reach it."""

    repo_id: str  # as NDIF spells it
    model_key: str  # nnsight's "import.path.Class:{json}" key that NDIF deployed the model under
    host: str
    api_key: str = field(repr=False)  # never printed


# ---------------------------------------------------------------------- checks (fail fast)


def require_api_key(settings: Settings) -> str:
    if not settings.ndif_api_key:
        raise RemoteUnavailable(
            "Remote execution is on (LAYERLENS_REMOTE=1) but no NDIF API key is set. Get a key at "
            "https://login.ndif.us and set NDIF_API_KEY (or LAYERLENS_NDIF_API_KEY), or switch remote "
            "execution off with LAYERLENS_REMOTE=0 to run local models only."
        )
    return settings.ndif_api_key


def check_reachable(host: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to the NDIF host within ``timeout`` seconds, else ``RemoteUnavailable``."""
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteUnavailable(f"NDIF host '{host}' is not an http(s) address: fix NDIF_HOST.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RemoteUnavailable(
            f"NDIF at {host} cannot be reached ({exc.__class__.__name__}: {exc}; gave up after "
            f"{timeout:g} s). This machine may be offline. Connect to the internet, check NDIF_HOST "
            "and https://status.ndif.us, or switch remote execution off (LAYERLENS_REMOTE=0) and use "
            "a local model."
        ) from exc


def hosted_deployment(host: str, repo_id: str, api_key: str, timeout: float = STATUS_TIMEOUT_S) -> tuple[str, str]:
    """(repo id as NDIF spells it, model key) of ``repo_id``'s running deployment on NDIF."""
    import httpx

    try:
        response = httpx.get(f"{host}/status", timeout=timeout, headers={"ndif-api-key": api_key})
        response.raise_for_status()
        deployments = response.json().get("deployments", {})
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise RemoteUnavailable(f"NDIF at {host} did not return its model list ({exc}). Try again later.") from exc
    hosted = {}
    for name, entry in deployments.items():
        if entry.get("deployment_level") in ("HOT", "WARM") and entry.get("application_state") == "RUNNING":
            hosted.setdefault(str(entry.get("repo_id", name)), entry.get("model_key"))
    for hosted_id, model_key in hosted.items():
        if hosted_id.lower() == repo_id.lower():
            return hosted_id, model_key or default_model_key(hosted_id)
    listed = ", ".join(sorted(hosted)[:12]) or "none right now"
    raise RemoteUnavailable(
        f"NDIF does not host '{repo_id}' right now, so it cannot run remotely (weights are never "
        f"downloaded here). Models NDIF runs now: {listed}."
    )


def default_model_key(repo_id: str, revision: str | None = None) -> str:
    """The key nnsight's ``TransformersModel.to_model_key()`` builds for a hub id, without its hub lookup."""
    from nnsight import TransformersModel
    from nnsight.util import to_import_path

    return f"{to_import_path(TransformersModel)}:{json.dumps({'repo_id': repo_id, 'revision': revision})}"


def connect(repo_id: str, settings: Settings) -> RemoteTarget:
    """The three checks, cheapest first: API key, NDIF reachable, model hosted."""
    api_key = require_api_key(settings)
    host = settings.ndif_host.rstrip("/")
    check_reachable(host)
    hosted_id, model_key = hosted_deployment(host, repo_id, api_key)
    return RemoteTarget(repo_id=hosted_id, model_key=model_key, host=host, api_key=api_key)


# ---------------------------------------------------------------------- the weightless model


def fetch_metadata(repo_id: str) -> Path:
    """A folder with the model's config and tokenizer files (from the local HF cache, else the hub)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=METADATA_FILES, local_files_only=True))
    except Exception:
        pass  # not cached yet
    try:
        return Path(snapshot_download(repo_id, allow_patterns=METADATA_FILES))
    except Exception as exc:  # offline, gated repo, hub down: all mean "no config here"
        raise RemoteUnavailable(
            f"NDIF hosts '{repo_id}', but its config and tokenizer (a few MB; weights are never "
            f"downloaded) are not in the local HuggingFace cache and could not be fetched from the hub "
            f"({exc.__class__.__name__}). Go online without HF_HUB_OFFLINE=1 (gated models also need "
            "HF_TOKEN), or copy the files into the HuggingFace cache."
        ) from exc


def meta_model(path: Path, rename: dict):
    """The nnsight model built from ``path``'s config on the meta device: no weights, never dispatched
    (every trace on it goes to NDIF through ``trace_options``)."""
    from nnsight import TransformersModel
    from transformers import AutoTokenizer

    path = str(Path(path).resolve())
    tokenizer = AutoTokenizer.from_pretrained(path)  # the meta pipeline cannot infer it from a bare config
    return TransformersModel(path, task="text-generation", tokenizer=tokenizer, dispatch=False, rename=rename)


# ---------------------------------------------------------------------- traces


def trace_options(target: RemoteTarget | None) -> dict:
    """Keyword arguments for ``lm.trace``: none for a local model, NDIF's backend for a remote one."""
    if target is None:
        return {}
    return {"backend": _backend(target)}


def _backend(target: RemoteTarget):
    return _backend_class()(target.model_key, host=target.host, api_key=target.api_key, blocking=True)


@functools.cache
def _backend_class():
    """nnsight's blocking NDIF backend with a quick reachability check before each request and
    transport failures turned into messages (its websocket has no connect timeout of its own)."""
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

    class CheckedRemoteBackend(RemoteBackend):
        def __call__(self, tracer=None):
            check_reachable(self.host)
            try:
                return super().__call__(tracer)
            except RemoteError as exc:
                raise RemoteUnavailable(f"NDIF could not run the request: {exc}") from exc
            except (OSError, websocket.WebSocketException) as exc:
                raise RemoteUnavailable(
                    f"Lost the connection to NDIF at {self.host} ({exc}). Try again, or switch remote "
                    "execution off (LAYERLENS_REMOTE=0)."
                ) from exc

    return CheckedRemoteBackend
