"""Analyses: pure functions (model, request, recorded activations) -> frozen result dataclasses.

Each module cites its paper, defines ``NAME`` and ``VERSION`` (bumped whenever
its numbers could change, so cached results are keyed to the code), a frozen
request (JSON-able fields; ``request_digest`` keys it) and a frozen result of
numpy arrays and scalars whose ``__post_init__`` checks shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict


def request_json(request) -> str:
    """Canonical JSON of a request dataclass (sorted keys), stored next to its result."""
    return json.dumps(asdict(request), sort_keys=True)


def request_digest(request) -> str:
    """Content digest of a request: equal requests, equal digests, in every process."""
    return hashlib.sha256(f"{type(request).__name__}:{request_json(request)}".encode()).hexdigest()
