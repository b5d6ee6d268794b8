"""Circuit tasks: sets of clean/corrupted prompt pairs, batched, and the task metric.

Owns the task datasets (``TASKS``, ``task_pairs``: generated from word lists written for this project in
``workbench/data/circuit_*.json``, every pair checked for the model at hand, deterministic in the seed),
the user's CSV of pairs (``parse_pairs_csv``: bounded in bytes, rows and characters, one-line errors), and
turning a task's prompt pairs (``prompt_pairs.PromptPair``) into one right-padded batch
(``PairBatch``) and the metric every circuit analysis reports. Within a pair the clean and the
corrupted prompt have the same number of tokens (positions align, as patching needs); different
pairs may differ in length: shorter ones are right-padded, masked out of attention, and read at their
own last real token, so a padded batch gives every pair the numbers it gives alone.

Task metric (after Wang et al. 2023 and Hanna et al. 2024, normalised over the whole task rather than
per pair, so a pair with a tiny clean-corrupted gap cannot blow it up)::

    LD_i = logit(answer_i) - logit(wrong_i) at pair i's last token
    M    = sum_i (LD_i - LD_i^corr) / sum_i (LD_i^clean - LD_i^corr)

``M`` is 0 on the corrupted runs and 1 on the clean runs, exactly.

Tasks (sources in ``TASKS``): IOI (Wang et al. 2023, ``prompt_pairs.ioi_pairs``); subject-verb agreement
with an attractor of the other number (Linzen et al. 2016; Finlayson et al. 2021); greater-than with years
(Hanna, Liu & Variengien 2023; scored by a logit difference of one later and one earlier continuation, not
the paper's probability difference, see ``greater_than_pair``); country -> capital. Measured clean accuracy
(share of pairs whose clean run prefers the answer; 40 pairs, seed 0): SmolLM2-135M 1.0 / 0.975 / 1.0 / 1.0
and Gemma 3 270M 1.0 / 0.975 / 1.0 / 1.0 for ioi / sva / greater_than / capitals.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from workbench.config import Settings
from workbench.errors import BadAnswer, BadPrompt, BadRequest, WorkbenchError
from workbench.prompt_pairs import PromptPair, encode_pair, ioi_pairs


@dataclass(frozen=True)
class PairBatch:
    """A task's pairs as one batch; ``seq`` is the longest pair's length."""

    pairs: tuple[PromptPair, ...]
    clean_ids: torch.Tensor  # (pair, seq) long, right-padded
    corrupted_ids: torch.Tensor  # (pair, seq) long, right-padded
    attention_mask: torch.Tensor  # (pair, seq) long: 1 on real tokens (the same for both prompts of a pair)
    last: torch.Tensor  # (pair,) long: index of each pair's last real token
    answer_ids: torch.Tensor  # (pair,) long
    wrong_ids: torch.Tensor  # (pair,) long

    def __len__(self) -> int:
        return len(self.pairs)

    def take(self, index: Sequence[int]) -> PairBatch:
        """The sub-batch of the given pairs, trimmed to its own longest pair."""
        index = torch.as_tensor(list(index), dtype=torch.long)
        seq = int(self.last[index].max()) + 1
        return PairBatch(tuple(self.pairs[i] for i in index.tolist()), self.clean_ids[index, :seq],
                         self.corrupted_ids[index, :seq], self.attention_mask[index, :seq], self.last[index],
                         self.answer_ids[index], self.wrong_ids[index])


def encode_pairs(model, pairs: Sequence[PromptPair], settings: Settings) -> PairBatch:
    """All pairs checked (``prompt_pairs.encode_pair``: equal lengths within a pair, single-token answers)
    and right-padded into one batch. A bad pair's error names it."""
    if not pairs:
        raise BadRequest("The task has no prompt pairs.")
    encoded = []
    for i, pair in enumerate(pairs):
        try:
            encoded.append(encode_pair(model, pair, settings))
        except WorkbenchError as exc:  # BadPrompt, BadAnswer, BadRequest: the same kind, naming the pair
            raise type(exc)(f"Pair {i + 1}: {exc}") from None
    seq = max(len(e.clean_ids) for e in encoded)
    # padding repeats each row's last token: any id the embedding has (a tokenizer's pad id may lie
    # outside a small model's vocabulary); masked out, so its value never matters
    clean = torch.zeros((len(encoded), seq), dtype=torch.long)
    corrupted, mask = torch.zeros_like(clean), torch.zeros_like(clean)
    for i, e in enumerate(encoded):
        n = len(e.clean_ids)
        clean[i, :n], corrupted[i, :n], mask[i, :n] = e.clean_ids, e.corrupted_ids, 1
        clean[i, n:], corrupted[i, n:] = e.clean_ids[-1], e.corrupted_ids[-1]
    last = mask.sum(1) - 1
    return PairBatch(tuple(pairs), clean, corrupted, mask, last,
                     torch.tensor([e.answer_id for e in encoded]), torch.tensor([e.wrong_id for e in encoded]))


def last_logits(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """(pair, seq, vocab) -> (pair, vocab): each pair's logits at its own last real token."""
    return logits[torch.arange(len(batch)), batch.last.to(logits.device)]


def logit_diffs(last: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """(pair, vocab) logits at the last token -> (pair,) LD_i = logit(answer) - logit(wrong)."""
    rows = torch.arange(len(batch), device=last.device)
    return last[rows, batch.answer_ids.to(last.device)] - last[rows, batch.wrong_ids.to(last.device)]


def task_metric(ld: torch.Tensor, ld_clean: torch.Tensor, ld_corrupted: torch.Tensor) -> torch.Tensor:
    """M = sum(LD - LD_corr) / sum(LD_clean - LD_corr) over pairs (see the module docstring); works on
    autograd tensors. Raises BadRequest when the clean and corrupted runs do not differ on the task."""
    gap = (ld_clean - ld_corrupted).sum()
    if abs(float(gap)) < 1e-6:
        raise BadRequest("The clean and corrupted prompts give the same total logit difference, so the task "
                         "metric is undefined; the corruption must change the answer.")
    return (ld - ld_corrupted).sum() / gap


# ====================================================================== task datasets
#
# Every bundled task generates candidate pairs from word lists written for this project
# (``workbench/data/circuit_*.json``; nothing downloaded), deterministically in the seed, and keeps a
# candidate only if ``prompt_pairs.encode_pair`` accepts it for the model at hand: the clean and the
# corrupted prompt have the same number of tokens, the answer and the wrong answer are single, different
# tokens. Candidates that fail are skipped; too few survivors is a BadRequest that says so.

DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_TASK_PAIRS = 1024  # the most pairs one task request may ask for
_ATTEMPTS_PER_PAIR = 20  # candidates tried per requested pair before giving up


@dataclass(frozen=True)
class TaskInfo:
    title: str
    description: str
    source: str  # the paper the task follows


TASKS: dict[str, TaskInfo] = {
    "ioi": TaskInfo(
        "Indirect object identification",
        "'When Mary and John went to the store, John gave a drink to' -> ' Mary'; the corrupted prompt repeats "
        "the other name, so its answer is ' John' (the wrong answer of the clean prompt).",
        "Wang et al. 2023, Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small",
    ),
    "sva": TaskInfo(
        "Subject-verb agreement with attractors",
        "'The key near the cabinets' -> ' is' (wrong: ' are'); the attractor noun has the other number. The "
        "corrupted prompt flips the subject's number ('The keys near the cabinets'), so it calls for ' are'.",
        "Linzen, Dupoux & Goldberg 2016, Assessing the Ability of LSTMs to Learn Syntax-Sensitive Dependencies; "
        "Finlayson et al. 2021, Causal Analysis of Syntactic Agreement Mechanisms in Neural Language Models",
    ),
    "greater_than": TaskInfo(
        "Greater-than (years)",
        "'The war lasted from the year 1732 to the year 17' -> a year after 1732; the corrupted start year is "
        "1701 (same century). Answer: the end year's next token when it makes a year after the start year, "
        "wrong: one that makes a year before it (see greater_than_pairs). Scored by the logit difference of the "
        "two tokens, not the paper's probability difference summed over all years.",
        "Hanna, Liu & Variengien 2023, How does GPT-2 compute greater-than?",
    ),
    "capitals": TaskInfo(
        "Country -> capital",
        "'The capital of France is' -> ' Paris'; the corrupted prompt names another country ('The capital of "
        "Italy is'), whose capital (' Rome') is the wrong answer of the clean prompt.",
        "Factual recall as studied by Meng et al. 2022, Locating and Editing Factual Associations in GPT",
    ),
    "csv": TaskInfo(
        "Your own pairs (CSV)",
        "A CSV file with the header clean,corrupted,answer,wrong: one pair per row, the answer being what the "
        "clean prompt calls for and the wrong answer what the corrupted prompt calls for.",
        "User data",
    ),
}


@cache
def _word_lists(name: str) -> dict:
    return json.loads((DATA_DIR / f"circuit_{name}.json").read_text(encoding="utf-8"))


def task_pairs(model, task: str, n_pairs: int, seed: int, settings: Settings,
               data: bytes | str | None = None) -> list[PromptPair]:
    """``n_pairs`` prompt pairs of ``task`` (a key of ``TASKS``) for ``model``, deterministic in ``seed``.

    Bundled tasks skip candidates the model cannot use (``prompt_pairs.encode_pair``) and raise BadRequest
    when fewer than ``n_pairs`` remain. ``"csv"`` reads ``data`` (``parse_pairs_csv``): a file with more
    rows than ``n_pairs`` gives a seeded sample of ``n_pairs`` rows in file order, a shorter one all of its
    rows; a row the model cannot use is an error naming the row (the user's own data is never skipped
    silently)."""
    if task not in TASKS:
        raise BadRequest(f"Unknown circuit task {_excerpt(task)}; choose one of {', '.join(TASKS)}.")
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 1 <= n_pairs <= MAX_TASK_PAIRS:
        raise BadRequest(f"The number of pairs must be a whole number from 1 to {MAX_TASK_PAIRS}.")
    if task == "csv":
        if data is None:
            raise BadRequest("The CSV task needs a file: upload a CSV with the columns clean,corrupted,answer,wrong.")
        return _csv_task(model, _read_pairs_csv(data), n_pairs, seed, settings)
    if data is not None:
        raise BadRequest(f"Only the csv task reads a file; the {task} task generates its own pairs.")
    if task == "ioi":
        return ioi_pairs(model, n_pairs, seed, settings)
    generator = {"sva": _sva_candidates, "greater_than": _greater_than_candidates,
                 "capitals": _capital_candidates}[task]
    return _checked(model, task, generator(model, random.Random(seed)), n_pairs, settings)


def _checked(model, task: str, candidates, n_pairs: int, settings: Settings) -> list[PromptPair]:
    """The first ``n_pairs`` distinct candidates that ``encode_pair`` accepts for the model."""
    pairs: list[PromptPair] = []
    seen: set[PromptPair] = set()
    for _attempt, pair in zip(range(_ATTEMPTS_PER_PAIR * n_pairs), candidates, strict=False):
        if pair in seen:
            continue
        seen.add(pair)
        try:
            encode_pair(model, pair, settings)
        except (BadPrompt, BadAnswer, BadRequest):
            continue
        pairs.append(pair)
        if len(pairs) == n_pairs:
            return pairs
    raise BadRequest(f"Could only build {len(pairs)} valid {task} pairs of the {n_pairs} asked for with "
                     f"{model.name}'s tokenizer; ask for fewer.")


def _single_token(model, text: str) -> bool:
    return len(model.tokenizer(text, add_special_tokens=False).input_ids) == 1


# ---------------------------------------------------------------------- subject-verb agreement


def sva_pair(template: str, subject: tuple[str, str], attractor: tuple[str, str], verb: tuple[str, str],
             plural: bool) -> PromptPair:
    """One agreement pair: the clean subject is plural when ``plural``, the attractor has the other number;
    the corrupted prompt flips the subject only. Answer: the verb form agreeing with the clean subject."""
    number = int(plural)
    clean = template.format(subject=subject[number], attractor=attractor[1 - number])
    corrupted = template.format(subject=subject[1 - number], attractor=attractor[1 - number])
    return PromptPair(clean=clean, corrupted=corrupted, answer=verb[number], wrong=verb[1 - number])


def _sva_candidates(model, rng: random.Random):
    words = _word_lists("sva")
    verbs = [tuple(v) for v in words["verbs"] if _single_token(model, v[0]) and _single_token(model, v[1])]
    if not verbs:
        raise BadRequest(f"None of the agreement verbs (is/are, was/were) is a single token for {model.name}.")
    while True:
        yield sva_pair(rng.choice(words["templates"]), tuple(rng.choice(words["subjects"])),
                       tuple(rng.choice(words["attractors"])), rng.choice(verbs), rng.random() < 0.5)


# ---------------------------------------------------------------------- greater-than


def year_split(model) -> str:
    """How the model's tokenizer continues a year after its century: ``"two_digit"`` when the last two
    digits are one token (GPT-2: '17' + '32'), ``"digit"`` when every digit is a token (SmolLM2, Gemma),
    else BadRequest (e.g. three-digit groups: no single token says "after the start year")."""
    prefix = "The war lasted from the year 1732 to the year 17"
    if _continues(model, prefix, "33"):
        return "two_digit"
    if _continues(model, prefix, "3"):
        return "digit"
    raise BadRequest(f"{model.name}'s tokenizer splits years so that no single token after the century "
                     "decides whether the end year is later; the greater-than task cannot be built for it.")


def _continues(model, prefix: str, word: str) -> bool:
    ids = model.tokenizer(prefix, add_special_tokens=False).input_ids
    longer = model.tokenizer(prefix + word, add_special_tokens=False).input_ids
    return len(longer) == len(ids) + 1 and longer[:len(ids)] == ids


def greater_than_pair(template: str, noun: str, century: str, start: int, split: str) -> PromptPair:
    """One greater-than pair: start year ``century`` + ``start`` (two digits), corrupted start ``century``01.

    ``split == "two_digit"``: answer = start + 1, wrong = start - 1 (both as two digits; 'from 1732 to 17'
    -> '33' vs '31'). ``split == "digit"``: the next token is the end year's tens digit, so answer = the
    start's tens digit + 1 (every year of that decade is later: '174x' > 1732) and wrong = tens digit - 1
    (every year of that decade is earlier: '172x' < 1732). The corrupted start year 01 makes most
    continuations later, which is what moves the logit difference (as in the paper)."""
    clean = template.format(noun=noun, century=century, start=f"{start:02d}")
    corrupted = template.format(noun=noun, century=century, start="01")
    if split == "two_digit":
        answer, wrong = f"{start + 1:02d}", f"{start - 1:02d}"
    else:
        tens = start // 10
        answer, wrong = str(tens + 1), str(tens - 1)
    return PromptPair(clean=clean, corrupted=corrupted, answer=answer, wrong=wrong)


def _greater_than_candidates(model, rng: random.Random):
    words = _word_lists("greater_than")
    split = year_split(model)
    low, high = (2, 98) if split == "two_digit" else (10, 89)  # digit: tens digit 1..8, so tens +- 1 exist
    while True:
        yield greater_than_pair(rng.choice(words["templates"]), rng.choice(words["nouns"]),
                                rng.choice(words["centuries"]), rng.randint(low, high), split)


# ---------------------------------------------------------------------- country -> capital


def capital_pair(template: str, clean: tuple[str, str], corrupted: tuple[str, str]) -> PromptPair:
    """``clean`` and ``corrupted`` are (country, capital); answer = the clean capital, wrong = the other."""
    return PromptPair(clean=template.format(country=clean[0]), corrupted=template.format(country=corrupted[0]),
                      answer=" " + clean[1], wrong=" " + corrupted[1])


def _capital_candidates(model, rng: random.Random):
    words = _word_lists("capitals")
    usable = [tuple(c) for c in words["capitals"] if _single_token(model, " " + c[1])]
    # countries grouped by how many tokens they take in each template, so the corrupted country keeps the
    # prompt's length (a random country would mostly be skipped)
    groups: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for template in words["templates"]:
        for entry in usable:
            n = len(model.tokenizer(template.format(country=entry[0])).input_ids)
            groups.setdefault((template, n), []).append(entry)
    choices = [(key, group) for key, group in groups.items() if len(group) >= 2]
    if not choices:
        raise BadRequest(f"Too few countries have a single-token capital for {model.name} to build pairs.")
    weights = [len(group) for _, group in choices]
    while True:
        (template, _n), group = rng.choices(choices, weights=weights)[0]
        clean, corrupted = rng.sample(group, 2)
        yield capital_pair(template, clean, corrupted)


# ---------------------------------------------------------------------- user CSV

PAIRS_CSV_COLUMNS = ("clean", "corrupted", "answer", "wrong")
PAIRS_CSV_MAX_ROWS = 2000
PAIRS_CSV_MAX_PROMPT_CHARS = 2000  # per prompt cell
PAIRS_CSV_MAX_ANSWER_CHARS = 200  # per answer cell (prompts.MAX_ANSWER_CHARS: far longer than any token)
# a row: two prompts and two answers of up to 4 UTF-8 bytes a character, quoted, plus 400 bytes of slack
PAIRS_CSV_MAX_ROW_BYTES = 4 * (2 * PAIRS_CSV_MAX_PROMPT_CHARS + 2 * PAIRS_CSV_MAX_ANSWER_CHARS) + 400
PAIRS_CSV_MAX_BYTES = (PAIRS_CSV_MAX_ROWS + 1) * PAIRS_CSV_MAX_ROW_BYTES
_EXCERPT_CHARS = 30


def _excerpt(text: object, limit: int = _EXCERPT_CHARS) -> str:
    """A short, quoted, one-line excerpt of user text (``repr`` escapes newlines and control characters)."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_pairs_csv(data: bytes | str) -> list[PromptPair]:
    """Prompt pairs from a CSV whose header names the columns clean, corrupted, answer and wrong (any
    order, any case; other columns are ignored). Cells are taken as written: an answer's leading space
    (' Mary') is part of the token. Raises a one-line BadRequest saying what to fix.

    A file over ``PAIRS_CSV_MAX_BYTES`` is refused before it is decoded; rows are read one at a time and
    the first row over a limit (``PAIRS_CSV_MAX_ROWS``, the per-cell character limits) stops the reading.
    Messages quote at most a short excerpt of the user's text and name rows as the file's records
    counted from the header (row 1)."""
    return [pair for _row, pair in _read_pairs_csv(data)]


def _read_pairs_csv(data: bytes | str) -> list[tuple[int, PromptPair]]:
    """``parse_pairs_csv`` with each pair's row number."""
    if not isinstance(data, (bytes, str)):
        raise BadRequest(f"The CSV must be bytes or text, not {type(data).__name__}.")
    if len(data) > PAIRS_CSV_MAX_BYTES:
        raise BadRequest(f"The CSV is {len(data) / 2**20:.1f} MB; at most {PAIRS_CSV_MAX_BYTES / 2**20:.1f} MB "
                         f"({PAIRS_CSV_MAX_ROWS} pairs) is accepted. Sample it down.")
    stream = (io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="") if isinstance(data, bytes)
              else io.StringIO(data.removeprefix("\ufeff"), newline=""))  # a BOM, as utf-8-sig drops it
    pairs: list[tuple[int, PromptPair]] = []
    try:
        reader = csv.reader(stream, strict=True)  # a broken quote is an error, not a swallowed file
        header = next(reader, None)
        if header is None:
            raise BadRequest("The CSV is empty; it needs the header clean,corrupted,answer,wrong and one pair a row.")
        names = [h.strip().lower() for h in header]
        missing = [c for c in PAIRS_CSV_COLUMNS if c not in names]
        if missing:
            found = ", ".join(_excerpt(h, 20) for h in header[:6]) + (", …" if len(header) > 6 else "")
            raise BadRequest(f"The CSV has no {' and no '.join(missing)} column; its header must name the columns "
                             f"clean,corrupted,answer,wrong (found: {found or 'nothing'}).")
        where = {c: names.index(c) for c in PAIRS_CSV_COLUMNS}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(pairs) == PAIRS_CSV_MAX_ROWS:
                raise BadRequest(f"The CSV has more than {PAIRS_CSV_MAX_ROWS} pairs; at most {PAIRS_CSV_MAX_ROWS} are "
                                 "accepted. Sample it down.")
            pairs.append((line, _csv_row(line, row, where)))
    except UnicodeDecodeError:
        raise BadRequest("The CSV is not UTF-8 text; save it as UTF-8 and upload it again.") from None
    except csv.Error as exc:
        raise BadRequest(f"The CSV could not be read ({str(exc)[:80]}); check its quoting.") from None
    if not pairs:
        raise BadRequest("The CSV has a header but no pairs; add one pair a row.")
    return pairs


def _csv_row(line: int, row: list[str], where: dict[str, int]) -> PromptPair:
    cells = {}
    for column, index in where.items():
        value = row[index] if index < len(row) else ""
        if not value.strip():
            raise BadRequest(f"Row {line} has an empty {column} cell; fill it in or remove the row.")
        limit = PAIRS_CSV_MAX_PROMPT_CHARS if column in ("clean", "corrupted") else PAIRS_CSV_MAX_ANSWER_CHARS
        if len(value) > limit:
            raise BadRequest(f"Row {line}: the {column} cell has {len(value):,} characters; the limit is {limit:,}.")
        cells[column] = value
    if cells["answer"] == cells["wrong"]:
        raise BadRequest(f"Row {line}: the answer and the wrong answer are the same ({_excerpt(cells['answer'])}).")
    if cells["clean"] == cells["corrupted"]:
        raise BadRequest(f"Row {line}: the clean and the corrupted prompt are the same; the corruption must "
                         "change the prompt.")
    return PromptPair(**cells)


def _csv_task(model, rows: list[tuple[int, PromptPair]], n_pairs: int, seed: int,
              settings: Settings) -> list[PromptPair]:
    if len(rows) > n_pairs:
        keep = sorted(random.Random(seed).sample(range(len(rows)), n_pairs))
        rows = [rows[i] for i in keep]
    for line, pair in rows:
        try:
            encode_pair(model, pair, settings)
        except WorkbenchError as exc:  # BadPrompt, BadAnswer, BadRequest: the same kind, naming the row
            raise type(exc)(f"Row {line} of the CSV: {exc}") from None
    return [pair for _line, pair in rows]
