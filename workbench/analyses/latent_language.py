"""Latent language: which language does the model route through on the way to its answer?

Wendler, Veselovsky, Monea & West (2024), "Do Llamas Work in English? On the Latent Language of
Multilingual Transformers" (the translation / repetition / cloze design, English as the pivot);
Zhong et al. (2025), "Beyond English-Centric LLMs: What Language Do Multilingual Language Models
Think in?" (ANY set of candidate latent languages, each language's probability reported per layer).

Prompts whose answer is a word in a target language (translation from a source language,
repetition, cloze), built from ``workbench/data/latent_language.json`` (every concept written in
every offered language). The reported languages are the target language, the pivot language
(``pivot_lang``, English by default: the only candidate before version 3) and any further
``candidates``, in that order, each once. For prompt ``x`` (``P`` tokens, ending with an opening
quote), language ``λ`` and its word ``w_λ``, tokenised as it continues the prompt into
``a_1 … a_k`` (the prompt's own tokens unchanged), and every residual slot ``l`` (block-0 input,
then each block's output) with the logit lens ``q_l(· | x) = softmax(softcap(W_U · norm_f(h_l)))``:

* **first-token probability** ``p_first[λ, l] = q_l(a_1 | x)``: the lens at the prompt's last
  position, the quantity of Wendler et al.;
* **whole-answer probability** ``p_whole[λ, l] = Π_{j=1..k} q_l(a_j | x a_1 … a_{j-1})``: teacher
  forced, i.e. the answer's tokens are appended and the lens distribution of THE SAME slot ``l``
  is read at each answer position (position ``P-1+j-1`` for ``a_j``). The ``j = 1`` factor is the
  first-token probability itself, so ``p_whole <= p_first``, with equality for a one-token word;
  at the last slot the product is the model's own probability of the whole word.

``multi_token=False`` (the default; version 2's filter) keeps only concepts whose word is ONE
token in every reported language and differs between them, so the two quantities are equal and
each language's mass is unambiguous. ``multi_token=True`` keeps every concept whose words continue
the prompt cleanly, whatever their length; where two languages' words begin with the same token
(``shared_first``) the first-token probability cannot tell them apart, and where they are the same
token sequence (``same_word``, e.g. Chinese and Japanese 学校) neither quantity can: the per-language
means (``language_means``) leave those cells out. Skipped concepts are listed by their target word.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from workbench import lenses, tracing
from workbench.analyses.base import Analysis
from workbench.axes import check_shapes, slot_labels
from workbench.errors import BadPrompt, BadRequest

NAME = "latent_language"
# 2: decoded inside the trace (last position only), so it also runs remotely
# 3: any set of candidate languages; first-token and whole-answer (teacher-forced) probabilities
VERSION = 3
TASKS = ("translation", "repetition", "cloze")
QUANTITIES = {"first": "first-token probability", "whole": "whole-answer probability"}
DATA_PATH = Path(__file__).resolve().parent.parent / "data" / "latent_language.json"
ANSWER_LABEL = {"en": "Answer", "fr": "Réponse", "de": "Antwort", "es": "Respuesta", "it": "Risposta"}


@cache
def dataset() -> dict:
    return json.loads(DATA_PATH.read_text(encoding="utf-8"))


def languages() -> dict[str, str]:
    """Offered languages: code -> the language's own name."""
    return dict(dataset()["languages"])


def _choices(langs: dict[str, str]) -> str:
    return ", ".join(f"{code} ({name})" for code, name in langs.items())


@dataclass(frozen=True)
class LatentLanguageRequest:
    task: str = "translation"
    target_lang: str = "fr"  # the language of the expected answer
    source_lang: str = "de"  # translation only: the language of the given word
    pivot_lang: str = "en"  # the first hypothesised latent language (version 2's only one)
    candidates: tuple[str, ...] = ()  # further candidate latent languages (Zhong et al.)
    multi_token: bool = False  # keep words of several tokens (whole-answer probability differs)
    max_prompts: int = 40

    def __post_init__(self):
        langs = languages()
        if self.task not in TASKS:
            raise BadRequest(f"Unknown task '{self.task}'; choose one of {', '.join(TASKS)}.")
        for role in ("target_lang", "source_lang", "pivot_lang"):
            if getattr(self, role) not in langs:
                raise BadRequest(f"{role} must be one of {', '.join(langs)}, not '{getattr(self, role)}'.")
        if not isinstance(self.candidates, (tuple, list)):
            raise BadRequest("candidates is a list of language codes, e.g. ['de', 'zh'].")
        object.__setattr__(self, "candidates", tuple(self.candidates))  # a list from Python: kept as a tuple
        for code in self.candidates:
            if code not in langs:
                shown = code if isinstance(code, str) else json.dumps(code)
                raise BadRequest(f"Unknown candidate language '{shown[:40]}'; choose among {_choices(langs)}.")
        if self.target_lang == self.pivot_lang:
            raise BadRequest("The target and pivot languages must differ.")
        if self.task == "translation" and self.source_lang == self.target_lang:
            raise BadRequest("Translation needs a source language different from the target language.")
        if self.task == "cloze" and self.target_lang not in dataset()["cloze"]:
            raise BadRequest(f"Cloze sentences exist for {', '.join(dataset()['cloze'])} only.")
        if not isinstance(self.multi_token, bool):
            raise BadRequest("multi_token is true or false.")
        if not 1 <= self.max_prompts <= 200:
            raise BadRequest("max_prompts must be between 1 and 200.")

    @property
    def reported(self) -> tuple[str, ...]:
        """The reported languages: target, pivot, then the other candidates, each once."""
        return tuple(dict.fromkeys((self.target_lang, self.pivot_lang, *self.candidates)))


@dataclass(frozen=True)
class PromptSpec:
    text: str  # ends with an opening quote: the next tokens are the answer
    answer: str  # the word in the target language
    pivot: str  # the same word in the pivot language
    words: tuple[str, ...] = ()  # the word in every reported language (request.reported order)


def build_prompts(request: LatentLanguageRequest) -> list[PromptSpec]:
    """Few-shot prompts for every concept of the task (before the tokenisation filter)."""
    data, names = dataset(), languages()
    tgt, src, reported = request.target_lang, request.source_lang, request.reported
    if request.task == "cloze":
        shots = "\n".join(f'{s} {ANSWER_LABEL[tgt]}: "{w}"' for s, w in data["cloze_demonstrations"][tgt])
        by_en = {w["en"]: w for w in data["words"]}
        return [
            PromptSpec(f'{shots}\n{sentence} {ANSWER_LABEL[tgt]}: "', by_en[en][tgt], by_en[en][request.pivot_lang],
                       tuple(by_en[en][lang] for lang in reported))
            for en, sentence in data["cloze"][tgt].items()
        ]
    given = src if request.task == "translation" else tgt
    line = lambda w: f'{names[given]}: "{w[given]}" - {names[tgt]}: "'  # noqa: E731
    shots = "\n".join(f'{line(w)}{w[tgt]}"' for w in data["demonstrations"])
    return [PromptSpec(f"{shots}\n{line(w)}", w[tgt], w[request.pivot_lang], tuple(w[lang] for lang in reported))
            for w in data["words"]]


@dataclass(frozen=True, eq=False)
class LatentLanguageResult:
    """Per prompt, language and slot. ``p_answer`` / ``p_pivot`` are ``p_first`` of the target and
    pivot languages (version 2's fields, kept). A result built from those fields alone (version 2's
    layout: single-token words of two languages) gets the per-language fields filled from them."""

    model_name: str
    task: str
    target_lang: str
    source_lang: str
    pivot_lang: str
    layer_labels: np.ndarray  # (slot,) str
    prompts: np.ndarray  # (prompt,) str
    answers: np.ndarray  # (prompt,) str: target-language words
    pivots: np.ndarray  # (prompt,) str: pivot-language words
    p_answer: np.ndarray  # (prompt, slot) float32: first-token lens probability of the answer
    p_pivot: np.ndarray  # (prompt, slot) float32: first-token lens probability of the pivot word
    final_correct: np.ndarray  # (prompt,) bool: the model's own top-1 is the answer's first token
    skipped: np.ndarray  # (skipped,) str: target words of the concepts the tokenisation filter dropped
    langs: np.ndarray | None = None  # (lang,) str: reported languages, target first, pivot second
    words: np.ndarray | None = None  # (prompt, lang) str: the concept in each language
    n_tokens: np.ndarray | None = None  # (prompt, lang) int64: tokens of each word after the prompt
    p_first: np.ndarray | None = None  # (prompt, lang, slot) float32: FIRST-TOKEN lens probability
    p_whole: np.ndarray | None = None  # (prompt, lang, slot) float32: WHOLE-ANSWER lens probability
    shared_first: np.ndarray | None = None  # (prompt, lang) bool: another language's word starts alike
    same_word: np.ndarray | None = None  # (prompt, lang) bool: another language's word is the same tokens
    multi_token: bool = False

    def __post_init__(self):
        n, n_slots = len(self.prompts), len(self.layer_labels)
        if self.langs is None:  # version 2's layout
            both = np.stack([self.p_answer, self.p_pivot], axis=1).astype(np.float32)
            filled = {"langs": np.array([self.target_lang, self.pivot_lang]),
                      "words": np.stack([self.answers, self.pivots], axis=1).reshape(n, 2).astype(str),
                      "n_tokens": np.ones((n, 2), np.int64), "p_first": both, "p_whole": both.copy(),
                      "shared_first": np.zeros((n, 2), bool), "same_word": np.zeros((n, 2), bool)}
            for name, value in filled.items():
                object.__setattr__(self, name, value)
        n_langs = len(self.langs)
        check_shapes(self, {"answers": (n,), "pivots": (n,), "p_answer": (n, n_slots), "p_pivot": (n, n_slots),
                            "final_correct": (n,), "words": (n, n_langs), "n_tokens": (n, n_langs),
                            "p_first": (n, n_langs, n_slots), "p_whole": (n, n_langs, n_slots),
                            "shared_first": (n, n_langs), "same_word": (n, n_langs)})

    def probabilities(self, quantity: str) -> np.ndarray:
        """(prompt, lang, slot): ``p_first`` for "first", ``p_whole`` for "whole"."""
        if quantity not in QUANTITIES:
            raise BadRequest(f"Unknown quantity '{quantity}'; choose one of {', '.join(QUANTITIES)}.")
        return self.p_first if quantity == "first" else self.p_whole

    def valid(self, quantity: str) -> np.ndarray:
        """(prompt, lang) bool: the cells where ``quantity`` belongs to that language alone."""
        return ~self.shared_first if quantity == "first" else ~self.same_word


@dataclass(frozen=True)
class LanguageMeans:
    mean: np.ndarray  # (lang, slot) float64: mean over the prompts counted for that language
    half_width: np.ndarray  # (lang, slot) float64: 95% normal band, 1.96 standard errors (0 for < 2 prompts)
    counted: np.ndarray  # (lang,) int64: prompts counted (valid cells, and correct ones when asked)


def language_means(result: LatentLanguageResult, quantity: str, only_correct: bool = False) -> LanguageMeans:
    """Per language and slot, the mean probability (``quantity``: "first" or "whole") over the
    prompts where it is that language's alone (``LatentLanguageResult.valid``), optionally only over
    the prompts the model answers correctly. A language with no such prompt has NaN means."""
    values, valid = result.probabilities(quantity).astype(np.float64), result.valid(quantity)
    if only_correct:
        valid = valid & result.final_correct[:, None]
    n_langs, n_slots = values.shape[1], values.shape[2]
    mean, half = np.full((n_langs, n_slots), np.nan), np.zeros((n_langs, n_slots))
    for lang in range(n_langs):
        rows = values[valid[:, lang], lang]  # (counted, slot)
        if len(rows):
            mean[lang] = rows.mean(0)
        if len(rows) > 1:
            half[lang] = 1.96 * rows.std(0, ddof=1) / np.sqrt(len(rows))
    return LanguageMeans(mean, half, valid.sum(0).astype(np.int64))


@dataclass(frozen=True)
class UsablePrompt:
    spec: PromptSpec
    tokens: tuple[tuple[int, ...], ...]  # per reported language: the word's tokens after the prompt

    @property
    def answer_id(self) -> int:
        return self.tokens[0][0]

    @property
    def pivot_id(self) -> int:
        return self.tokens[1][0]


def continuation_tokens(tokenizer, prefix: str, word: str) -> tuple[int, ...] | None:
    """The tokens ``word`` adds when written right after ``prefix`` (which keeps its own tokens);
    None when it adds none or changes the prefix's tokenisation."""
    base = tokenizer(prefix).input_ids
    ids = tokenizer(prefix + word).input_ids
    if len(ids) <= len(base) or ids[: len(base)] != base:
        return None
    return tuple(int(t) for t in ids[len(base):])


def usable_prompts(
    request: LatentLanguageRequest, tokens: Callable[[str, str], Sequence[int] | None]
) -> tuple[list[UsablePrompt], list[str]]:
    """Split the task's prompts into usable ones and the target words of skipped concepts.

    ``tokens(prefix, word)`` gives the word's tokens after the prompt (None: no clean continuation).
    Single-token mode needs every reported word to be one token, all distinct; multi-token mode
    needs every word to continue the prompt cleanly."""
    usable, skipped = [], []
    for spec in build_prompts(request):
        found = [tokens(spec.text, word) for word in spec.words]
        ok = all(found)
        if ok and not request.multi_token:
            firsts = [t[0] for t in found]
            ok = all(len(t) == 1 for t in found) and len(set(firsts)) == len(firsts)
        if not ok:
            skipped.append(spec.answer)
        elif len(usable) < request.max_prompts:
            usable.append(UsablePrompt(spec, tuple(tuple(int(i) for i in t) for t in found)))
    return usable, skipped


@dataclass(frozen=True)
class AnswerReads:
    """The batched, teacher-forced reads of one prompt: ``sequences[0]`` is the prompt, then one row
    per word of several tokens (prompt + all its tokens but the last); read ``r`` takes the lens
    log-probability of ``ids[r]`` at (``rows[r]``, ``positions[r]``). Reads 0 .. lang-1 are the first
    tokens at the prompt's last position; ``owner[r]`` is the language a read belongs to."""

    sequences: list[list[int]]
    rows: list[int]
    positions: list[int]
    ids: list[int]
    owner: list[int]


def answer_reads(prompt_ids: Sequence[int], tokens: Sequence[Sequence[int]]) -> AnswerReads:
    prompt, last = [int(t) for t in prompt_ids], len(prompt_ids) - 1
    sequences, rows, positions, ids, owner = [prompt], [], [], [], []
    for lang, word in enumerate(tokens):  # a_1 of every language: one distribution, the prompt's last position
        rows.append(0), positions.append(last), ids.append(int(word[0])), owner.append(lang)
    for lang, word in enumerate(tokens):
        if len(word) > 1:
            sequences.append(prompt + [int(t) for t in word[:-1]])
            for j in range(1, len(word)):  # a_{j+1} is read where a_j was fed in
                rows.append(len(sequences) - 1), positions.append(last + j), ids.append(int(word[j]))
                owner.append(lang)
    return AnswerReads(sequences, rows, positions, ids, owner)


def teacher_forced_logprobs(unembed, states: list, real, rows, positions, ids):
    """Inside a ``reduce_slots_batch`` trace: ``states`` (slot tensors, each (row, seq, d_model)) ->
    the lens log-probability of ``ids[r]`` at (``rows[r]``, ``positions[r]``), (slot, read) float64,
    and the top-1 id of read 0 (the prompt's last position), (slot,). One slot decoded at a time, so
    at most (read, vocab) logits are held; every read position is a real token (``real`` unused)."""
    out, top1 = [], []
    read = torch.arange(len(ids), device=ids.device)
    for state in states:
        logprobs = torch.log_softmax(unembed(state[rows, positions]).double(), dim=-1)  # (read, vocab)
        out.append(logprobs[read, ids])
        top1.append(logprobs[0].argmax())
    return torch.stack(out), torch.stack(top1)


def last_position_lens(model, token_ids: torch.Tensor, wanted: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per residual slot, the logit-lens probabilities of the ``wanted`` ids at the last position,
    (slot, wanted) float64, and each slot's top-1 id there, (slot,) int64. Decoded inside the trace
    (the last position only, ``lenses.last_position_probs``), so only these leave it, here or on NDIF."""
    probs, top1 = tracing.reduce_slots(model, token_ids, lenses.last_position_probs, list(wanted), last_only=True)
    return probs, top1


def lens_reads(model, reads: AnswerReads) -> tuple[torch.Tensor, torch.Tensor]:
    """``reads`` in one right-padded forward of its sequences: (slot, read) log-probabilities, (slot,) top-1."""
    device = model.device
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return tracing.reduce_slots_batch(model, reads.sequences, teacher_forced_logprobs, as_tensor(reads.rows),
                                      as_tensor(reads.positions), as_tensor(reads.ids))


def run(ctx, request: LatentLanguageRequest, progress) -> LatentLanguageResult:
    model = ctx.model
    return compute(model, request, encode=lambda text: ctx.encode(text).ids,
                   read=lambda reads: lens_reads(model, reads), progress=progress)


def compute(
    model,
    request: LatentLanguageRequest,
    encode: Callable[[str], torch.Tensor],
    read: Callable[[AnswerReads], tuple[torch.Tensor, torch.Tensor]],
    progress: Callable[[float | None, str], None] = lambda f, m: None,
) -> LatentLanguageResult:
    """``encode(text) -> ids``; ``read(AnswerReads) -> (logprobs (slot, read), top1 (slot,))``: the
    logit-lens log-probabilities of the reads in every residual slot (``lens_reads``)."""
    usable, skipped = usable_prompts(request, lambda prefix, word: continuation_tokens(model.tokenizer, prefix, word))
    reported = request.reported
    if not usable:
        names = ", ".join(reported)
        if request.multi_token:
            raise BadRequest(f"No concept of this task continues the prompt cleanly in every chosen language "
                             f"({names}) for {model.name}; choose other languages.")
        raise BadRequest(
            f"No concept of this task is a single token in every chosen language ({names}), distinct from the "
            f"others, for {model.name}; allow answers of several tokens or choose fewer languages."
        )
    n_langs = len(reported)
    p_first, p_whole, correct = [], [], []
    for i, item in enumerate(usable):
        longest = max(range(n_langs), key=lambda lang: len(item.tokens[lang]))
        try:  # the longest teacher-forced row must fit the model too
            encode(item.spec.text + item.spec.words[longest])
        except BadPrompt as exc:
            raise BadPrompt(f"Prompt {i + 1} of {len(usable)} with its longest answer appended: {exc}") from None
        reads = answer_reads(encode(item.spec.text).tolist(), item.tokens)
        logprobs, top1 = read(reads)  # (slot, read), (slot,)
        owner = torch.tensor(reads.owner)
        whole = torch.zeros(n_langs, logprobs.shape[0], dtype=torch.float64).index_add_(0, owner, logprobs.T)
        p_first.append(logprobs[:, :n_langs].T.exp().float().numpy())  # (lang, slot)
        p_whole.append(whole.exp().float().numpy())  # a one-token word: the very same number as p_first
        correct.append(bool(top1[-1] == item.answer_id))
        progress((i + 1) / len(usable), f"Prompt {i + 1} of {len(usable)}")
    p_first, p_whole = np.stack(p_first), np.stack(p_whole)
    tokens = [item.tokens for item in usable]
    shared = np.array([[any(t[a][0] == t[b][0] for b in range(n_langs) if b != a) for a in range(n_langs)]
                       for t in tokens], dtype=bool).reshape(len(usable), n_langs)
    same = np.array([[any(t[a] == t[b] for b in range(n_langs) if b != a) for a in range(n_langs)] for t in tokens],
                    dtype=bool).reshape(len(usable), n_langs)
    return LatentLanguageResult(
        model_name=model.name,
        task=request.task,
        target_lang=request.target_lang,
        source_lang=request.source_lang if request.task == "translation" else request.target_lang,
        pivot_lang=request.pivot_lang,
        layer_labels=slot_labels(p_first.shape[-1] - 1),
        prompts=np.array([u.spec.text for u in usable]),
        answers=np.array([u.spec.answer for u in usable]),
        pivots=np.array([u.spec.pivot for u in usable]),
        p_answer=p_first[:, 0].copy(),
        p_pivot=p_first[:, 1].copy(),
        final_correct=np.array(correct, dtype=bool),
        skipped=np.array(skipped, dtype=str),
        langs=np.array(reported),
        words=np.array([u.spec.words for u in usable], dtype=str).reshape(len(usable), n_langs),
        n_tokens=np.array([[len(w) for w in t] for t in tokens], dtype=np.int64).reshape(len(usable), n_langs),
        p_first=p_first,
        p_whole=p_whole,
        shared_first=shared,
        same_word=same,
        multi_token=request.multi_token,
    )


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Latent language", Request=LatentLanguageRequest, Result=LatentLanguageResult,
    run=run,
)
