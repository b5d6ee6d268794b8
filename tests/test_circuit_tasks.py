"""Circuit task batches (workbench.circuit_tasks): padding-safe batches and the task metric."""

import pytest
import torch

from workbench.circuit_tasks import encode_pairs, last_logits, logit_diffs, task_metric
from workbench.errors import BadRequest, WorkbenchError
from workbench.prompt_pairs import PromptPair

PAIRS = [  # different lengths across pairs, equal within a pair (tiny models tokenise by bytes or words)
    PromptPair("When Mary and John went out, John gave it to", "When Mary and John went out, Mary gave it to",
               " Mary", " John"),
    PromptPair("Then John said to", "Then Mary said to", " Mary", " John"),
    PromptPair("After the long day at the office, Mary and John talked, and John spoke to",
               "After the long day at the office, Mary and John talked, and Mary spoke to", " Mary", " John"),
]


def _pairs_for(model):
    """The pairs whose answers are single tokens for this tiny model, else single characters."""
    one = [p for p in PAIRS if len(model.tokenizer(p.answer, add_special_tokens=False).input_ids) == 1
           and len(model.tokenizer(p.wrong, add_special_tokens=False).input_ids) == 1]
    if one:
        return one
    return [PromptPair(p.clean, p.corrupted, "M", "J")
            for p in PAIRS]


def test_padded_batch_equals_single_runs(workbench, settings, tiny_dir):
    model = workbench.model(str(tiny_dir))
    batch = encode_pairs(model, _pairs_for(model), settings)
    assert len(set(batch.last.tolist())) > 1, "the pairs should differ in length"
    hf = model.hf_model
    with torch.no_grad():
        for ids in (batch.clean_ids, batch.corrupted_ids):
            batched = last_logits(hf(input_ids=ids, attention_mask=batch.attention_mask).logits.float(), batch)
            for i in range(len(batch)):
                n = int(batch.last[i]) + 1
                alone = hf(input_ids=ids[i:i + 1, :n]).logits[0, -1].float()
                torch.testing.assert_close(batched[i], alone, atol=2e-4, rtol=1e-4)
    sub = batch.take([1])
    assert sub.clean_ids.shape[1] == int(batch.last[1]) + 1


def test_task_metric_is_zero_on_corrupted_and_one_on_clean(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    batch = encode_pairs(model, _pairs_for(model), settings)
    hf = model.hf_model
    with torch.no_grad():
        ld_clean = logit_diffs(last_logits(hf(input_ids=batch.clean_ids, attention_mask=batch.attention_mask).logits,
                                           batch), batch)
        ld_corr = logit_diffs(last_logits(hf(input_ids=batch.corrupted_ids, attention_mask=batch.attention_mask).logits,
                                          batch), batch)
    assert float(task_metric(ld_clean, ld_clean, ld_corr)) == pytest.approx(1.0)
    assert float(task_metric(ld_corr, ld_clean, ld_corr)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(BadRequest, match="undefined"):
        task_metric(ld_corr, ld_corr, ld_corr)


def test_bad_pairs_name_the_pair(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    bad = [*_pairs_for(model)[:1], PromptPair("Then John said to", "Then Mary and Bob said to", "M", "J")]
    with pytest.raises(WorkbenchError, match="Pair 2"):
        encode_pairs(model, bad, settings)
    with pytest.raises(BadRequest, match="no prompt pairs"):
        encode_pairs(model, [], settings)


# ====================================================================== task datasets

import json  # noqa: E402
import re  # noqa: E402

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from tests.tiny_models import ARCHITECTURES, build_config  # noqa: E402
from workbench import circuit_tasks  # noqa: E402
from workbench.circuit_tasks import (  # noqa: E402
    MAX_TASK_PAIRS,
    PAIRS_CSV_MAX_BYTES,
    PAIRS_CSV_MAX_ROWS,
    TASKS,
    parse_pairs_csv,
    task_pairs,
    year_split,
)
from workbench.prompt_pairs import CANDIDATE_NAMES, TEMPLATES  # noqa: E402

BUNDLED = ("ioi", "sva", "greater_than", "capitals")


def _lists(name):
    return json.loads((circuit_tasks.DATA_DIR / f"circuit_{name}.json").read_text())


def _task_corpus() -> list[str]:
    """Text holding every word the bundled tasks use, so a BPE with enough merges has each as one token."""
    sva, years, capitals = _lists("sva"), _lists("greater_than"), _lists("capitals")
    nouns, places, verbs = sum(sva["subjects"], []), sum(sva["attractors"], []), sum(sva["verbs"], [])
    lines = [t.format(io=a, s=b) + f" {a}." for t in TEMPLATES for a, b in zip(CANDIDATE_NAMES, CANDIDATE_NAMES[1:],
                                                                               strict=False)]
    lines += [t.format(subject=s, attractor=a) + v for t in sva["templates"]
              for s, a, v in zip(nouns, places * 3, verbs * 40, strict=False)]
    lines += [t.format(noun=n, century=c, start=f"{y:02d}") + f"{y:02d}" for t in years["templates"]
              for n, c, y in zip(years["nouns"] * 4, years["centuries"] * 20, range(100), strict=False)]
    lines += [t.format(country=c) + f" {cap}." for t in capitals["templates"] for c, cap in capitals["capitals"]]
    return lines


def _task_tokenizer(digits: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with enough merges to make every word of the tasks one token (with its leading
    space, as in GPT-2); numbers are cut into runs of ``digits`` digits before the merges (1: SmolLM2 /
    Gemma style, 2: GPT-2 style '17' + '32')."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(rf"\d{{1,{digits}}}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    numbers = [f"{y:02d}" for y in range(100)] if digits == 2 else [str(d) for d in range(10)]
    trainer = trainers.BpeTrainer(vocab_size=5000, special_tokens=["<unk>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_task_corpus() + numbers, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def task_dirs(tiny_root):
    """Tiny random models of every tiny architecture (and a GPT-2 with two-digit year tokens) whose
    tokenizer has every task word as one token."""
    out = {}
    for key, arch, digits in [*((a, a, 1) for a in ARCHITECTURES), ("gpt2_two_digit", "gpt2", 2)]:
        directory = tiny_root / f"task_vocab_{key}"
        if not directory.exists():
            torch.manual_seed(0)
            tokenizer = _task_tokenizer(digits)
            AutoModelForCausalLM.from_config(build_config(arch, len(tokenizer))).save_pretrained(directory)
            tokenizer.save_pretrained(directory)
        out[key] = directory
    return out


def _check_meaning(task, pair, split):
    """The answer is what the clean prompt calls for and the wrong answer what the corrupted one does."""
    if task == "ioi":
        io, s = pair.answer.strip(), pair.wrong.strip()
        assert (pair.clean.count(io), pair.clean.count(s)) == (1, 2)  # the subject repeats: answer the other
        assert (pair.corrupted.count(io), pair.corrupted.count(s)) == (2, 1)
    elif task == "sva":
        sva = _lists("sva")
        singular = {s for s, _ in sva["subjects"]}
        plural = {p for _, p in sva["subjects"]}
        clean_subject, corrupted_subject = pair.clean.split()[1], pair.corrupted.split()[1]
        assert pair.clean.split()[2:] == pair.corrupted.split()[2:]  # only the subject changes
        attractor = pair.clean.split()[-1]
        verbs = {tuple(v) for v in sva["verbs"]}
        if clean_subject in singular:
            assert corrupted_subject in plural and (pair.answer, pair.wrong) in verbs
            assert attractor in {p for _, p in sva["attractors"]}  # the attractor has the other number
        else:
            assert clean_subject in plural and corrupted_subject in singular
            assert (pair.wrong, pair.answer) in verbs
            assert attractor in {s for s, _ in sva["attractors"]}
    elif task == "greater_than":
        start = int(re.search(r"year \d\d(\d\d)", pair.clean).group(1))
        assert re.search(r"year \d\d01", pair.corrupted) and pair.clean.endswith(pair.corrupted[-2:])
        if split == "digit":  # the end year's tens digit: every year of that decade is later / earlier
            assert len(pair.answer) == len(pair.wrong) == 1
            assert int(pair.answer) * 10 > start and int(pair.wrong) * 10 + 9 < start
        else:
            assert len(pair.answer) == len(pair.wrong) == 2 and int(pair.answer) > start >= int(pair.wrong)
    elif task == "capitals":
        capital = dict(map(tuple, _lists("capitals")["capitals"]))
        clean_country = re.search(r"of (\w+) is$", pair.clean).group(1)
        corrupted_country = re.search(r"of (\w+) is$", pair.corrupted).group(1)
        assert clean_country != corrupted_country
        assert (pair.answer, pair.wrong) == (" " + capital[clean_country], " " + capital[corrupted_country])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bundled_tasks_give_valid_meaningful_pairs(workbench, settings, task_dirs, arch):
    model = workbench.model(str(task_dirs[arch]))
    assert year_split(model) == "digit"
    for task in BUNDLED:
        pairs = task_pairs(model, task, 16, 5, settings)
        assert len(pairs) == 16 and len(set(pairs)) == (16 if task != "ioi" else len(set(pairs)))
        batch = encode_pairs(model, pairs, settings)  # every pair valid: equal lengths, single-token answers
        assert (batch.answer_ids != batch.wrong_ids).all()
        assert torch.equal(batch.attention_mask.sum(1) - 1, batch.last)
        for pair in pairs:
            _check_meaning(task, pair, "digit")
        if task == "sva":
            assert {p.answer for p in pairs} >= {" is", " are"} or {p.answer for p in pairs} >= {" was", " were"}
        if task != "ioi":  # the generated tasks vary their templates
            assert len({_template_of(task, p.clean) for p in pairs}) > 1


def _template_of(task, text):
    """The index of the word-list template that ``text`` fills."""
    templates = _lists(task)["templates"]
    found = [i for i, t in enumerate(templates)
             if re.fullmatch(re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(t)), text)]
    assert len(found) == 1, (text, found)
    return found[0]


def test_greater_than_follows_the_tokenizer_year_split(workbench, settings, task_dirs, tiny_dirs):
    two = workbench.model(str(task_dirs["gpt2_two_digit"]))
    assert year_split(two) == "two_digit"
    pairs = task_pairs(two, "greater_than", 20, 1, settings)
    encode_pairs(two, pairs, settings)
    for pair in pairs:
        _check_meaning("greater_than", pair, "two_digit")
    assert year_split(workbench.model(str(tiny_dirs["llama"]))) == "digit"  # the byte-level tiny BPE


def test_tasks_are_deterministic_in_the_seed(workbench, settings, task_dirs):
    model = workbench.model(str(task_dirs["llama"]))
    for task in BUNDLED:
        first = task_pairs(model, task, 10, 7, settings)
        assert task_pairs(model, task, 10, 7, settings) == first
        assert task_pairs(model, task, 4, 7, settings) == first[:4]  # a prefix: fewer pairs, same ones
        assert task_pairs(model, task, 10, 8, settings) != first


def test_tasks_skip_what_the_model_cannot_use_and_say_when_too_few_remain(workbench, settings, tiny_dirs):
    """The byte-level tiny BPE has ' is' but no single-token ' are', and only ' Paris' and ' Rome' as
    single-token capitals: 2 countries x 3 templates x 2 orders = 6 distinct capital pairs at most."""
    model = workbench.model(str(tiny_dirs["llama"]))
    with pytest.raises(BadRequest, match="None of the agreement verbs"):
        task_pairs(model, "sva", 4, 0, settings)
    six = task_pairs(model, "capitals", 6, 0, settings)
    assert {(p.answer, p.wrong) for p in six} == {(" Paris", " Rome"), (" Rome", " Paris")}
    with pytest.raises(BadRequest, match="Could only build 6 valid capitals pairs of the 7"):
        task_pairs(model, "capitals", 7, 0, settings)


def test_task_requests_are_checked(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    assert set(TASKS) == {*BUNDLED, "csv"} and all(info.source and info.description for info in TASKS.values())
    for n in (0, -1, MAX_TASK_PAIRS + 1, True, 2.5):
        with pytest.raises(BadRequest, match="number of pairs"):
            task_pairs(model, "ioi", n, 0, settings)
    with pytest.raises(BadRequest, match="Unknown circuit task '<b>x</b>'; choose one of ioi, sva"):
        task_pairs(model, "<b>x</b>", 2, 0, settings)
    with pytest.raises(BadRequest, match="needs a file"):
        task_pairs(model, "csv", 2, 0, settings)
    with pytest.raises(BadRequest, match="Only the csv task reads a file"):
        task_pairs(model, "ioi", 2, 0, settings, data=b"clean,corrupted,answer,wrong\n")


# ---------------------------------------------------------------------- the user CSV

GOOD_CSV = ('\ufeffWrong,Clean,note,Corrupted,Answer\n'  # a BOM, any case, any order, an extra column
            '" John","When Mary and John went out, John gave it to",x,"When Mary and John went out, Mary gave it to",'
            '" Mary"\n'
            '\n'  # a blank line is skipped
            '" Mary","Then Mary said to",,"Then John said to"," John"\n')


def test_csv_pairs_are_read_as_written():
    pairs = parse_pairs_csv(GOOD_CSV.encode())
    assert pairs == [
        PromptPair("When Mary and John went out, John gave it to", "When Mary and John went out, Mary gave it to",
                   " Mary", " John"),
        PromptPair("Then Mary said to", "Then John said to", " John", " Mary"),  # the leading spaces are kept
    ]
    assert parse_pairs_csv(GOOD_CSV) == pairs  # text as well as bytes


@pytest.mark.parametrize("data, message", [
    (b"", "The CSV is empty"),
    (b"clean,corrupted,answer,wrong\n", "a header but no pairs"),
    (b"clean,corrupted,answer\na,b,c\n", "no wrong column"),
    (b"prompt,label\na,b\n", "no clean and no corrupted and no answer and no wrong column"),
    (b"clean,corrupted,answer,wrong\nA b,A c, x,\n", "Row 2 has an empty wrong cell"),
    (b"clean,corrupted,answer,wrong\nA b,A c, x, y\nA b,A c\n", "Row 3 has an empty answer cell"),
    (b"clean,corrupted,answer,wrong\nA b,   , x, y\n", "Row 2 has an empty corrupted cell"),
    (b"clean,corrupted,answer,wrong\nA b,A c, x, x\n", "Row 2: the answer and the wrong answer are the same"),
    (b"clean,corrupted,answer,wrong\nA b,A b, x, y\n", "Row 2: the clean and the corrupted prompt are the same"),
    (b"clean,corrupted,answer,wrong\nA b,A c, \xff\xfe, y\n", "not UTF-8"),
    (b'clean,corrupted,answer,wrong\n"A b,A c, x, y\n', "could not be read"),  # an unclosed quote
    ("clean,corrupted,answer,wrong\nA b,A c," + "x" * 201 + ", y\n",
     "Row 2: the answer cell has 201 characters; the limit is 200"),
])
def test_csv_errors_say_what_to_fix_in_one_line(data, message):
    with pytest.raises(BadRequest, match=message) as caught:
        parse_pairs_csv(data)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_csv_limits_stop_big_files_early():
    row = "Then Mary said to,Then John said to, John, Mary\n"
    at_limit = "clean,corrupted,answer,wrong\n" + row * PAIRS_CSV_MAX_ROWS
    assert len(parse_pairs_csv(at_limit.encode())) == PAIRS_CSV_MAX_ROWS
    with pytest.raises(BadRequest, match=f"more than {PAIRS_CSV_MAX_ROWS} pairs"):
        parse_pairs_csv((at_limit + row).encode())
    with pytest.raises(BadRequest, match="MB; at most"):
        parse_pairs_csv(b"x" * (PAIRS_CSV_MAX_BYTES + 1))
    with pytest.raises(BadRequest, match="must be bytes or text"):
        parse_pairs_csv(None)


def test_csv_errors_never_echo_more_than_a_short_excerpt():
    hostile = "<script>alert(1)</script>" * 40 + "\n**bold**"
    with pytest.raises(BadRequest) as caught:
        parse_pairs_csv(f'"{hostile}",corrupted,answer\nA,B,C\n'.encode())
    message = str(caught.value)
    assert "no clean and no wrong column" in message and "\n" not in message
    assert "<script>alert(1)</script>" * 2 not in message and len(message) < 260


def test_csv_task_samples_rows_and_names_a_bad_row(workbench, settings, tiny_dirs):
    model = workbench.model(str(tiny_dirs["llama"]))
    good = [p for p in PAIRS if len(model.tokenizer(p.answer, add_special_tokens=False).input_ids) == 1]
    assert good, "the tiny tokenizer has ' Mary' and ' John' as single tokens"
    rows = [good[i % len(good)] for i in range(9)]
    data = ("clean,corrupted,answer,wrong\n" + "".join(
        f'"{p.clean}","{p.corrupted}","{p.answer}","{p.wrong}"\n' for p in rows)).encode()
    assert task_pairs(model, "csv", 20, 0, settings, data=data) == rows  # fewer rows than asked: all of them
    sampled = task_pairs(model, "csv", 4, 3, settings, data=data)
    assert len(sampled) == 4 and sampled == task_pairs(model, "csv", 4, 3, settings, data=data)
    bad = data + b'"Then John said to","Then Mary and Bob said to"," Mary"," John"\n'
    with pytest.raises(WorkbenchError, match="Row 11 of the CSV: The clean prompt is"):
        task_pairs(model, "csv", 20, 0, settings, data=bad)


# ---------------------------------------------------------------------- real models (slow)

# measured with 40 pairs, seed 0 (clean accuracy = share of pairs where the clean run prefers the answer):
#                 ioi    sva    greater_than  capitals
#  smollm2-135m   1.000  0.975  1.000         1.000
#  gemma3-270m    1.000  0.975  1.000         1.000
REAL_PAIRS = 24


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_models_solve_the_bundled_tasks(workbench, settings, name):
    model = workbench.model(name)
    assert year_split(model) == "digit"  # both tokenizers write a year digit by digit
    for task in BUNDLED:
        pairs = task_pairs(model, task, REAL_PAIRS, 0, settings)
        batch = encode_pairs(model, pairs, settings)
        with torch.no_grad():
            lds = [logit_diffs(last_logits(model.hf_model(input_ids=ids, attention_mask=batch.attention_mask)
                                           .logits.float(), batch), batch)
                   for ids in (batch.clean_ids, batch.corrupted_ids)]
        clean, corrupted = lds
        accuracy = float((clean > 0).float().mean())
        print(f"{name} {task}: clean accuracy {accuracy:.3f}, mean LD clean {clean.mean():.2f}, "
              f"corrupted {corrupted.mean():.2f}")
        assert accuracy >= 0.9, (task, accuracy)
        assert float((clean > corrupted).float().mean()) >= 0.9, task  # the corruption moves the pair's LD
        assert float(task_metric(clean, clean, corrupted)) == pytest.approx(1.0)
