"""Latent language: does the model route through English on the way to another language?

Wendler, Veselovsky, Monea & West (2024), "Do Llamas Work in English? On the Latent
Language of Multilingual Transformers"; Zhong et al. (2024), "Beyond English-Centric
LLMs: What Language Do Multilingual Language Models Think in?".

Prompts with a single-token answer in a target language (translation from a source
language, repetition, cloze), built from ``workbench/data/latent_language.json``. Per
layer, the logit-lens probability at the last position of the answer token in the
target language and of the same word in a pivot language (English by default). A word
is used only when, written after the opening quote, both forms are exactly one token
each and differ; the rest are listed as skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from workbench import lenses, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import check_shapes, slot_labels
from workbench.errors import BadRequest

NAME = "latent_language"
VERSION = 2  # 2: decoded inside the trace (last position only), so it also runs remotely
TASKS = ("translation", "repetition", "cloze")
DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "latent_language.json"
ANSWER_LABEL = {"en": "Answer", "fr": "Réponse", "de": "Antwort", "es": "Respuesta", "it": "Risposta"}


@cache
def dataset() -> dict:
    return json.loads(DATA_PATH.read_text(encoding="utf-8"))


def languages() -> dict[str, str]:
    return dict(dataset()["languages"])


@dataclass(frozen=True)
class LatentLanguageRequest:
    task: str = "translation"
    target_lang: str = "fr"  # the language of the expected answer
    source_lang: str = "de"  # translation only: the language of the given word
    pivot_lang: str = "en"  # the hypothesised latent language
    max_prompts: int = 40

    def __post_init__(self):
        langs = languages()
        if self.task not in TASKS:
            raise BadRequest(f"Unknown task '{self.task}'; choose one of {', '.join(TASKS)}.")
        for role in ("target_lang", "source_lang", "pivot_lang"):
            if getattr(self, role) not in langs:
                raise BadRequest(f"{role} must be one of {', '.join(langs)}, not '{getattr(self, role)}'.")
        if self.target_lang == self.pivot_lang:
            raise BadRequest("The target and pivot languages must differ.")
        if self.task == "translation" and self.source_lang == self.target_lang:
            raise BadRequest("Translation needs a source language different from the target language.")
        if self.task == "cloze" and self.target_lang not in dataset()["cloze"]:
            raise BadRequest(f"Cloze sentences exist for {', '.join(dataset()['cloze'])} only.")
        if not 1 <= self.max_prompts <= 200:
            raise BadRequest("max_prompts must be between 1 and 200.")


@dataclass(frozen=True)
class PromptSpec:
    text: str  # ends with an opening quote: the next token is the answer
    answer: str  # the word in the target language
    pivot: str  # the same word in the pivot language


def build_prompts(request: LatentLanguageRequest) -> list[PromptSpec]:
    """Few-shot prompts for every word of the task (before the single-token filter)."""
    data, names = dataset(), languages()
    tgt, src, piv = request.target_lang, request.source_lang, request.pivot_lang
    if request.task == "cloze":
        shots = "\n".join(f'{s} {ANSWER_LABEL[tgt]}: "{w}"' for s, w in data["cloze_demonstrations"][tgt])
        by_en = {w["en"]: w for w in data["words"]}
        return [
            PromptSpec(f'{shots}\n{sentence} {ANSWER_LABEL[tgt]}: "', by_en[en][tgt], by_en[en][piv])
            for en, sentence in data["cloze"][tgt].items()
        ]
    given = src if request.task == "translation" else tgt
    line = lambda w: f'{names[given]}: "{w[given]}" - {names[tgt]}: "'  # noqa: E731
    shots = "\n".join(f'{line(w)}{w[tgt]}"' for w in data["demonstrations"])
    return [PromptSpec(f"{shots}\n{line(w)}", w[tgt], w[piv]) for w in data["words"]]


@dataclass(frozen=True, eq=False)
class LatentLanguageResult:
    model_name: str
    task: str
    target_lang: str
    source_lang: str
    pivot_lang: str
    layer_labels: np.ndarray  # (slot,) str
    prompts: np.ndarray  # (prompt,) str
    answers: np.ndarray  # (prompt,) str: target-language words
    pivots: np.ndarray  # (prompt,) str: pivot-language words
    p_answer: np.ndarray  # (prompt, slot) float32: lens probability of the answer token
    p_pivot: np.ndarray  # (prompt, slot) float32: lens probability of the pivot token
    final_correct: np.ndarray  # (prompt,) bool: the model's own top-1 is the answer
    skipped: np.ndarray  # (skipped,) str: words dropped by the single-token filter

    def __post_init__(self):
        n, n_slots = len(self.prompts), len(self.layer_labels)
        check_shapes(self, {"answers": (n,), "pivots": (n,), "p_answer": (n, n_slots), "p_pivot": (n, n_slots),
                            "final_correct": (n,)})



@dataclass(frozen=True)
class UsablePrompt:
    spec: PromptSpec
    answer_id: int
    pivot_id: int


def usable_prompts(
    request: LatentLanguageRequest, token_id: Callable[[str, str], int | None]
) -> tuple[list[UsablePrompt], list[str]]:
    """Split the task's prompts into usable ones (both words single, distinct tokens) and skipped words."""
    usable, skipped = [], []
    for spec in build_prompts(request):
        answer_id, pivot_id = token_id(spec.text, spec.answer), token_id(spec.text, spec.pivot)
        if answer_id is None or pivot_id is None or answer_id == pivot_id:
            skipped.append(spec.answer)
        elif len(usable) < request.max_prompts:
            usable.append(UsablePrompt(spec, answer_id, pivot_id))
    return usable, skipped


def last_position_lens(model, token_ids: torch.Tensor, wanted: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per residual slot, the logit-lens probabilities of the ``wanted`` ids at the last position,
    (slot, wanted) float64, and each slot's top-1 id there, (slot,) int64. Decoded inside the trace
    (the last position only, ``lenses.last_position_probs``), so only these leave it, here or on NDIF."""
    probs, top1 = tracing.reduce_slots(model, token_ids, lenses.last_position_probs, list(wanted), last_only=True)
    return probs, top1


def run(ctx, request: LatentLanguageRequest, progress) -> LatentLanguageResult:
    model = ctx.model
    return compute(model, request, encode=lambda text: ctx.encode(text).ids,
                   last_lens=lambda ids, wanted: last_position_lens(model, ids, wanted), progress=progress)


def compute(
    model,
    request: LatentLanguageRequest,
    encode: Callable[[str], torch.Tensor],
    last_lens: Callable[[torch.Tensor, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]],
    progress: Callable[[float | None, str], None] = lambda f, m: None,
) -> LatentLanguageResult:
    """``encode(text) -> ids``; ``last_lens(ids, (answer, pivot)) -> (probs (slot, 2), top1 (slot,))``:
    the logit-lens probabilities of the two tokens at the last position of every residual slot
    (block-0 input, then every block output) and each slot's top-1 token (``last_position_lens``)."""
    usable, skipped = usable_prompts(request, lambda prefix, word: prompts.continuation_token_id(model, prefix, word))
    if not usable:
        raise BadRequest(
            f"No word of this task is a single token in both {request.target_lang} and "
            f"{request.pivot_lang} for {model.name}; try another language pair."
        )
    p_answer, p_pivot, correct = [], [], []
    for i, item in enumerate(usable):
        probs, top1 = last_lens(encode(item.spec.text), (item.answer_id, item.pivot_id))
        p_answer.append(probs[:, 0].float().numpy())
        p_pivot.append(probs[:, 1].float().numpy())
        correct.append(bool(top1[-1] == item.answer_id))
        progress((i + 1) / len(usable), f"Prompt {i + 1} of {len(usable)}")
    n_layers = len(p_answer[0])
    return LatentLanguageResult(
        model_name=model.name,
        task=request.task,
        target_lang=request.target_lang,
        source_lang=request.source_lang if request.task == "translation" else request.target_lang,
        pivot_lang=request.pivot_lang,
        layer_labels=slot_labels(n_layers - 1),
        prompts=np.array([u.spec.text for u in usable]),
        answers=np.array([u.spec.answer for u in usable]),
        pivots=np.array([u.spec.pivot for u in usable]),
        p_answer=np.stack(p_answer),
        p_pivot=np.stack(p_pivot),
        final_correct=np.array(correct, dtype=bool),
        skipped=np.array(skipped, dtype=str),
    )


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Latent language", Request=LatentLanguageRequest, Result=LatentLanguageResult,
    run=run,
)
