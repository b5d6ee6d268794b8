"""Clean/corrupted prompt pairs for patching: the IOI generator and pair validation.

Owns turning a pair of texts plus answer and wrong-answer tokens into token ids, with the
checks patching needs (same number of tokens, single-token answers), and generating
Indirect Object Identification pairs (Wang et al. 2023) whose names are single tokens
for the chosen model. Corruption swaps the repeated subject for the indirect object
("..., John gave a drink to" -> "..., Mary gave a drink to"), which flips the answer while
keeping every token position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from workbench import prompts
from workbench.config import Settings
from workbench.errors import BadAnswer, BadPrompt, BadRequest
from workbench.models.loader import LoadedModel

TEMPLATES = (
    "When {io} and {s} went to the store, {s} gave a drink to",
    "When {io} and {s} went to the park, {s} gave a ball to",
    "After {io} and {s} went to the office, {s} handed a book to",
    "Then, {io} and {s} had a long argument, and afterwards {s} said to",
    "While {io} and {s} were working at the garden, {s} gave a flower to",
    "When {io} and {s} got a snack at the cafe, {s} decided to give it to",
)
CANDIDATE_NAMES = (
    "Mary", "John", "Alice", "Bob", "Tom", "James", "Anna", "Sarah", "David", "Paul", "Mark", "Lisa",
    "Kate", "Peter", "Laura", "Mike", "Emma", "Jack", "Susan", "George", "Linda", "Steve", "Amy", "Chris",
    "Daniel", "Rachel", "Kevin", "Helen", "Brian", "Julia",
)


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupted: str
    answer: str  # e.g. " Mary": the indirect object, the clean answer
    wrong: str  # e.g. " John": the subject, what the corrupted prompt points to


@dataclass(frozen=True)
class EncodedPair:
    clean_ids: torch.Tensor  # (seq,)
    corrupted_ids: torch.Tensor  # (seq,)
    answer_id: int
    wrong_id: int


def encode_pair(model: LoadedModel, pair: PromptPair, settings: Settings) -> EncodedPair:
    """Token ids of both prompts and both answers; BadPrompt/BadAnswer say what to fix."""
    clean = prompts.encode(model, pair.clean, settings)
    corrupted = prompts.encode(model, pair.corrupted, settings)
    if len(clean.ids) != len(corrupted.ids):
        raise BadPrompt(
            f"The clean prompt is {len(clean.ids)} tokens and the corrupted one {len(corrupted.ids)} "
            f"for {model.name}; patching needs the same number of tokens. Swap words that are one "
            "token each (e.g. one name for another)."
        )
    answer_id = prompts.single_token_id(model, pair.answer)
    wrong_id = prompts.single_token_id(model, pair.wrong)
    if answer_id == wrong_id:
        raise BadRequest("The answer and the wrong answer are the same token; pick two different ones.")
    return EncodedPair(clean.ids, corrupted.ids, answer_id, wrong_id)


def single_token_names(model: LoadedModel) -> list[str]:
    """Candidate names that are one token (with their leading space) for this model."""
    names = []
    for name in CANDIDATE_NAMES:
        if len(model.tokenizer(" " + name, add_special_tokens=False).input_ids) == 1:
            names.append(name)
    return names


def ioi_pair(template: str, io: str, s: str) -> PromptPair:
    """One IOI pair: the clean prompt, and the same with the repeated subject replaced by ``io``."""
    clean = template.format(io=io, s=s)
    head, tail = clean.rsplit(" " + s, 1)
    return PromptPair(clean=clean, corrupted=f"{head} {io}{tail}", answer=" " + io, wrong=" " + s)


def ioi_pairs(model: LoadedModel, n_pairs: int, seed: int, settings: Settings) -> list[PromptPair]:
    """``n_pairs`` IOI pairs (deterministic in ``seed``), each checked with ``encode_pair``."""
    names = single_token_names(model)
    if len(names) < 2:
        raise BadRequest(
            f"Fewer than two of the IOI names are single tokens for {model.name}; enter pairs by hand."
        )
    rng = random.Random(seed)
    pairs: list[PromptPair] = []
    for _attempt in range(20 * n_pairs):
        if len(pairs) == n_pairs:
            break
        template = rng.choice(TEMPLATES)
        io, s = rng.sample(names, 2)
        pair = ioi_pair(template, io, s)
        try:
            encode_pair(model, pair, settings)
        except (BadPrompt, BadAnswer, BadRequest):
            continue
        pairs.append(pair)
    if len(pairs) < n_pairs:
        raise BadRequest(f"Could only build {len(pairs)} valid IOI pairs for {model.name}; ask for fewer.")
    return pairs
