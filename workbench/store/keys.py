"""Cache keys: content digests naming what the store holds.

Owns how an entry is named. Keys are SHA-256 digests, never Python ``hash()``
(salted per process):

* ``ResultKey``: analysis name + analysis code version + model digest + request digest;
* ``ActivationKey``: model digest + digest of the input token ids (``ids_digest``) + site name.

``KEY_FORMAT`` is part of every digest; schema migrations keep it, so migrated
entries stay reachable under the same keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

KEY_FORMAT = 1  # part of every key digest; migrations keep it, so migrated entries stay reachable


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


@dataclass(frozen=True)
class ResultKey:
    analysis: str
    analysis_version: int
    model_digest: str
    request_digest: str

    @property
    def id(self) -> str:
        return _digest(KEY_FORMAT, self.analysis, self.analysis_version, self.model_digest, self.request_digest)


@dataclass(frozen=True)
class ActivationKey:
    model_digest: str
    input_digest: str  # digest of the token ids, see ``ids_digest``
    site: str  # e.g. "resid": block-0 input then every block output

    @property
    def id(self) -> str:
        return _digest(KEY_FORMAT, self.model_digest, self.input_digest, self.site)


def ids_digest(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()
