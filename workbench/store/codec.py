"""Exact (de)serialisation of result dataclasses.

Owns the mapping between a frozen result dataclass and what the store keeps:
numpy-array fields become ``.npy`` bytes (bit-exact, any dtype including
strings), every other field goes into one JSON object. ``same_result`` compares
two results field by field, arrays bit for bit and the other fields as the codec
stores them (so a NaN equals itself, -0.0 differs from 0.0, 1 from 1.0).
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np


def encode(result) -> tuple[str, dict[str, bytes]]:
    scalars, arrays = {}, {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, value, allow_pickle=False)
            arrays[field.name] = buffer.getvalue()
        else:
            scalars[field.name] = value
    return json.dumps(scalars, sort_keys=True), arrays


def decode(result_type, scalars_json: str, arrays: dict[str, bytes]):
    values = json.loads(scalars_json)
    for name, blob in arrays.items():
        values[name] = np.load(io.BytesIO(blob), allow_pickle=False)
    return result_type(**values)


def same_result(a, b) -> bool:
    """True when both results have the same type and identical fields: arrays bit for bit, other fields
    by their JSON (what the store keeps; Python's ``!=`` would call a NaN field different from itself)."""
    if type(a) is not type(b):
        return False
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape):
                return False
            if x.tobytes() != y.tobytes():
                return False
        elif not _same_scalar(x, y):
            return False
    return True


def _same_scalar(x, y) -> bool:
    try:
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)
    except TypeError:  # not JSON, so never stored as such: plain equality
        return x == y
