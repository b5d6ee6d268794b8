"""The workbench's own errors: every failure a user can cause or meet.

Owns the error hierarchy. Each error carries a message written for the person
at the keyboard (what went wrong and what to do about it); pages show
``str(error)`` as is, and nothing outside this package needs a traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: a failure with a message fit to show to a user."""


class UnknownModel(WorkbenchError):
    """The name is neither a catalog entry, a local model directory nor a reachable hub id."""


class ModelNotAllowed(WorkbenchError):
    """A shared link or an export bundle names a model directory outside the model roots
    (``LAYERLENS_MODEL_ROOTS``); only the user may open such a path, by typing it."""


class UnsupportedArchitecture(WorkbenchError):
    """The model loads, but the adapter has no mapping (or an incomplete one) for it."""


class ModelLoadError(WorkbenchError):
    """The model's files exist but could not be read or converted."""


class BadPrompt(WorkbenchError):
    """The prompt is empty, too long, or not text."""


class BadAnswer(WorkbenchError):
    """An answer/target token is empty or not exactly one token for this model."""


class BadRequest(WorkbenchError):
    """An analysis option is out of range."""


class BadBundle(BadRequest):
    """An export bundle cannot be used: not a bundle, a malformed manifest, or files too large."""


class CacheError(WorkbenchError):
    """The cache cannot be used (corrupt file, wrong schema, unwritable directory)."""


class CacheLocked(CacheError):
    """Another process (usually a second workbench server) holds the cache file."""


class RemoteUnavailable(WorkbenchError):
    """Remote execution (NDIF) is switched on but cannot be used: no API key, NDIF unreachable,
    or the model is not hosted there."""


class RemoteUnsupported(WorkbenchError):
    """The analysis needs the model's weights on this machine (PyTorch hooks, weight reads), which a
    model run remotely on NDIF does not have."""


class ExportUnavailable(WorkbenchError):
    """Static images cannot be made here (no Chromium, or it failed)."""
