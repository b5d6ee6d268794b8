"""Turning user text into token ids, with every check a user deserves.

Owns prompt validation (empty, too long, binary) and answer-token validation
(exactly one token). Prompts are tokenized the way the model's tokenizer does
by default, so Gemma gets its ``<bos>`` and SmolLM2 gets none, as in normal use.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import torch

from workbench.config import Settings
from workbench.errors import BadAnswer, BadPrompt
from workbench.models.loader import LoadedModel

_ALLOWED_CONTROL = {"\n", "\t", "\r"}
MAX_ANSWER_CHARS = 200  # far longer than any vocabulary entry; stops huge "tokens" before the tokenizer


@dataclass(frozen=True)
class EncodedPrompt:
    text: str
    ids: torch.Tensor  # (seq,) int64
    tokens: tuple[str, ...]  # readable token strings, one per position


def check_text(prompt: object, settings: Settings) -> str:
    """Reject what is not a usable prompt before it reaches the tokenizer."""
    if not isinstance(prompt, str):
        raise BadPrompt(f"The prompt must be text, not {type(prompt).__name__}.")
    if not prompt.strip():
        raise BadPrompt("The prompt is empty. Type some text to analyse.")
    if len(prompt) > settings.max_prompt_chars:
        raise BadPrompt(
            f"The prompt has {len(prompt):,} characters; the limit is {settings.max_prompt_chars:,}."
        )
    bad = sorted({c for c in prompt if _is_binary(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise BadPrompt(f"The prompt contains control or binary characters ({shown}); remove them.")
    return prompt


def _is_binary(char: str) -> bool:
    category = unicodedata.category(char)
    return (category == "Cc" and char not in _ALLOWED_CONTROL) or category == "Cs"


def encode(model: LoadedModel, prompt: object, settings: Settings) -> EncodedPrompt:
    text = check_text(prompt, settings)
    ids = model.tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) == 0:
        raise BadPrompt(f"The prompt gives no tokens at all for {model.name}; type some ordinary text.")
    limit = min(settings.max_prompt_tokens, model.info.max_positions or settings.max_prompt_tokens)
    if len(ids) > limit:
        raise BadPrompt(
            f"The prompt is {len(ids)} tokens long; the limit for {model.name} is {limit} tokens. "
            "Shorten it."
        )
    return EncodedPrompt(text=text, ids=ids, tokens=token_strings(model, ids))


def token_strings(model: LoadedModel, ids) -> tuple[str, ...]:
    """Each id decoded on its own (so leading spaces stay visible). A piece that is not whole UTF-8
    text (decoding gives U+FFFD) is shown by its bytes instead: '<0xE2>' for a byte-fallback token
    (SentencePiece, e.g. Gemma), ' <0xE6>' for a partial byte-level BPE piece (GPT-2, SmolLM2)."""
    return tuple(_token_string(model.tokenizer, int(i)) for i in ids)


_BYTE_TOKEN = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")


def _token_string(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if not isinstance(piece, str):
        return text
    if _BYTE_TOKEN.fullmatch(piece):  # byte fallback: the tokenizer's own '<0xE2>'
        return piece.upper().replace("<0X", "<0x")
    table = _byte_level_table()
    if piece and all(c in table for c in piece):  # byte-level BPE: each character stands for one byte
        return bytes_text(bytes(table[c] for c in piece))
    return text


def bytes_text(data: bytes) -> str:
    """``data`` as text: whole UTF-8 characters as themselves, any other byte as '<0xNN>'."""
    text = data.decode("utf-8", errors="surrogateescape").replace("\ufffd", "<0xEF><0xBF><0xBD>")
    return re.sub("[\udc80-\udcff]", lambda m: f"<0x{ord(m.group()) - 0xDC00:02X}>", text)


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """Character -> byte of byte-level BPE (GPT-2's ``bytes_to_unicode``, inverted): printable
    Latin-1 bytes stand for themselves, the other 68 bytes for the characters from U+0100 on."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in kept}
    moved = [b for b in range(256) if chr(b) not in table]
    table.update({chr(256 + n): b for n, b in enumerate(moved)})
    return table


def single_token_id(model: LoadedModel, answer: object) -> int:
    """The id of ``answer`` if it is exactly one token (no special tokens added)."""
    if not isinstance(answer, str) or answer == "":
        raise BadAnswer("The target token is empty. Type a single token, e.g. ' Paris'.")
    if len(answer) > MAX_ANSWER_CHARS:
        raise BadAnswer(
            f"The target token has {len(answer):,} characters, not one token (at most {MAX_ANSWER_CHARS}). "
            "Type a single token, e.g. ' Paris'."
        )
    bad = sorted({c for c in answer if _is_binary(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise BadAnswer(f"The target token contains control or binary characters ({shown}); remove them.")
    ids = model.tokenizer(answer, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = " + ".join(repr(s) for s in token_strings(model, ids[:8])) + (" + ..." if len(ids) > 8 else "")
        raise BadAnswer(
            f"{answer!r} is {len(ids)} tokens for {model.name} ({pieces}), not one. "
            "Pick a single-token answer (mind the leading space)."
        )
    return int(ids[0])


def continuation_token_id(model: LoadedModel, prefix: str, word: str) -> int | None:
    """The id of ``word`` when, written right after ``prefix``, it is exactly one new token
    (and leaves the prefix's tokens unchanged); None otherwise."""
    base = model.tokenizer(prefix).input_ids
    ids = model.tokenizer(prefix + word).input_ids
    if len(ids) != len(base) + 1 or ids[: len(base)] != base:
        return None
    return int(ids[-1])


def check_texts(texts, what: str, settings: Settings, model: LoadedModel | None = None) -> None:
    """``check_text`` (with a model: ``encode``, so the token limit too) on each of a set of texts;
    the message says which one is bad ("Prompt 2 of 3: ...")."""
    for index, text in enumerate(texts):
        try:
            check_text(text, settings) if model is None else encode(model, text, settings)
        except BadPrompt as exc:
            raise BadPrompt(f"{what} {index + 1} of {len(texts)}: {exc}") from exc
