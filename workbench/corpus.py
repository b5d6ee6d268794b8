"""Text corpora that ship with the project's dependencies (no hub), split and chunked.

Owns the training/held-out text for corpus-level analyses (the tuned lens):

* ``python-reference``: the Python Language Reference topics bundled with CPython itself
  (``pydoc_data.topics``, Python Software Foundation, PSF licence): about 465k characters of
  English technical prose with some grammar and code. Every fifth topic (sorted by name) is
  held out, so evaluation never sees training text.

Chunks are token-id lists of a fixed length cut from each topic's text, in a fixed order.
"""

from __future__ import annotations

import hashlib
from functools import cache

from workbench.errors import BadRequest

CORPORA = ("python-reference",)
HELD_OUT_EVERY = 5


@cache
def _topics() -> tuple[tuple[str, str], ...]:
    from pydoc_data.topics import topics

    return tuple(sorted(topics.items()))


def texts(corpus: str, split: str) -> list[str]:
    """The corpus documents of one split, 'train' or 'heldout', in a fixed order."""
    if corpus not in CORPORA:
        raise BadRequest(f"Unknown corpus '{corpus}'; available: {', '.join(CORPORA)}.")
    if split not in ("train", "heldout"):
        raise BadRequest(f"split must be 'train' or 'heldout', not '{split}'.")
    held_out = split == "heldout"
    return [text for i, (_, text) in enumerate(_topics()) if (i % HELD_OUT_EVERY == 0) == held_out]


def digest(corpus: str) -> str:
    sha = hashlib.sha256()
    for text in texts(corpus, "train") + texts(corpus, "heldout"):
        sha.update(text.encode())
    return sha.hexdigest()


def chunks(tokenizer, corpus: str, split: str, chunk_tokens: int, limit: int | None = None) -> list[list[int]]:
    """Consecutive ``chunk_tokens``-long token-id windows of each document (the tail is dropped)."""
    out: list[list[int]] = []
    for text in texts(corpus, split):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for start in range(0, len(ids) - chunk_tokens + 1, chunk_tokens):
            out.append(ids[start : start + chunk_tokens])
            if limit is not None and len(out) >= limit:
                return out
    return out
