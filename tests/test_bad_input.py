"""Bad input at every analysis entry point of ``Workbench``: each is refused with a
``WorkbenchError`` whose message says what is wrong, and nothing reaches the store.

Covers empty / whitespace / over-long (characters and tokens) / binary / huge prompts,
answers that are not one token, unknown model names and broken model directories; prompts
are fuzzed (hypothesis) through the logit lens and the attention-sink probe on a tiny model.
``tests/test_errors.py`` holds the first, logit-lens-only versions of a few of these.
"""

from __future__ import annotations

import inspect
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.tiny_models import build_model_dir
from workbench import prompts
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.concept_depth import ConceptDepthRequest
from workbench.analyses.depth_use import DepthUseRequest
from workbench.analyses.latent_language import LatentLanguageRequest
from workbench.analyses.lens_comparison import LensComparisonRequest
from workbench.analyses.linear_shortcut import LinearShortcutRequest
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.analyses.neuron_classes import NeuronClassRequest
from workbench.analyses.neuron_effect import NeuronEffectRequest
from workbench.analyses.neuron_vocab import NeuronVocabRequest
from workbench.analyses.patching import PatchingRequest
from workbench.analyses.patching_faithfulness import FaithfulnessRequest
from workbench.analyses.sink_levels import SinkLevelsRequest
from workbench.analyses.tuned_lens import TunedLensConfig
from workbench.config import PROJECT_ROOT, Settings
from workbench.errors import (
    BadAnswer,
    BadPrompt,
    BadRequest,
    ModelLoadError,
    UnknownModel,
    UnsupportedArchitecture,
    WorkbenchError,
)
from workbench.service import Workbench

GOOD = "When Mary and John went to the store"
CORRUPTED = "When Mary and John went to the park"
TEXTS = tuple(f"{GOOD} number {i}" for i in range(8))
LABELS = (0, 1) * 4


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tiny_dirs) -> str:
    return str(tiny_dirs["llama"])


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    """One backend for the module: nothing in here may ever store anything."""
    settings = Settings(cache_dir=tmp_path_factory.mktemp("bad_input_cache"),
                        models_dir_override=PROJECT_ROOT / "cache" / "models")
    backend = Workbench(settings)
    yield backend
    backend.runtime.trainers.stop_all()
    backend.close()


def stored(wb: Workbench) -> tuple[int, int]:
    """(results, activation sets) in the store."""
    activations = wb.store._con.cursor().execute("SELECT count(*) FROM activation_sets").fetchall()[0][0]
    return wb.store.count_results(), activations


def refused(wb: Workbench, call: Callable[[], object], kind: type[WorkbenchError], *phrases: str) -> str:
    """``call`` raises ``kind`` (nothing else), its message holds every phrase, and the store is unchanged."""
    before = stored(wb)
    with pytest.raises(WorkbenchError) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, kind), f"{type(caught.value).__name__}: {message}"
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    message.encode("utf-8")  # shown in the browser: must be valid text (no lone surrogates)
    assert stored(wb) == before
    return message


# ----------------------------------------------------------------------------- entry points

# Each analysis entry point of Workbench, called with ``prompt`` where it takes text (else a good one).
PROMPT_ENTRY_POINTS: dict[str, Callable[[Workbench, str, object], object]] = {
    "logit_lens": lambda wb, m, p: wb.logit_lens(m, LogitLensRequest(p)),
    "linear_shortcut": lambda wb, m, p: wb.linear_shortcut(m, LinearShortcutRequest(p, fit_chunks=2)),
    "depth_use": lambda wb, m, p: wb.depth_use(m, DepthUseRequest(prompt=p)),
    "attention_sinks": lambda wb, m, p: wb.attention_sinks(m, SinkProbeRequest(prompt=p)),
    "sink_levels": lambda wb, m, p: wb.sink_levels(m, SinkLevelsRequest(prompts=(GOOD, p))),
    "compare_lenses": lambda wb, m, p: wb.compare_lenses(m, p, config=TunedLensConfig(chunk_tokens=32)),
    "next_token_distribution": lambda wb, m, p: wb.next_token_distribution(m, p),
    "neuron_effect": lambda wb, m, p: wb.neuron_effect(m, NeuronEffectRequest(p, 0, 0)),
    "patching": lambda wb, m, p: wb.patching(m, PatchingRequest(p, CORRUPTED, " Mary", " John")),
    "concept_depth": lambda wb, m, p: wb.concept_depth(m, ConceptDepthRequest("t", TEXTS[:-1] + (p,), LABELS)),
    "lens_comparison": lambda wb, m, p: wb.lens_comparison(m, LensComparisonRequest(p, lenses=("logit",),
                                                                                    eval_chunks=0)),
    "head_attention": lambda wb, m, p: wb.head_attention(m, p, 0, 0),
}
OTHER_ENTRY_POINTS: dict[str, Callable[[Workbench, str], object]] = {
    "latent_language": lambda wb, m: wb.latent_language(m, LatentLanguageRequest()),
    "neuron_classes": lambda wb, m: wb.neuron_classes(m, NeuronClassRequest()),
    "neuron_vocab": lambda wb, m: wb.neuron_vocab(m, NeuronVocabRequest(0, 0)),
    "neuron_search_token": lambda wb, m: wb.neuron_search_token(m, " Mary"),
    "neuron_contexts": lambda wb, m: wb.neuron_contexts(m),
    "neurons_of_class": lambda wb, m: wb.neurons_of_class(m, NeuronClassRequest(), "depletion"),
    "ioi_pairs": lambda wb, m: wb.ioi_pairs(m, 2),
    "patching_faithfulness": lambda wb, m: wb.patching_faithfulness(m, FaithfulnessRequest(n_pairs=2)),
    "start_tuned_lens_training": lambda wb, m: wb.start_tuned_lens_training(m, TunedLensConfig(chunk_tokens=32), 1),
    "tuned_lens_status": lambda wb, m: wb.tuned_lens_status(m, TunedLensConfig()),
    "stop_tuned_lens_training": lambda wb, m: wb.stop_tuned_lens_training(m, TunedLensConfig()),
}


def _with_good_prompt(call):
    return lambda wb, m: call(wb, m, GOOD)


ALL_ENTRY_POINTS = {
    **{name: _with_good_prompt(call) for name, call in PROMPT_ENTRY_POINTS.items()},
    **OTHER_ENTRY_POINTS,
}
# Public Workbench methods that are plumbing, not analyses a user asks for.
NOT_ENTRY_POINTS = {"close", "local_model", "model", "run", "concept_features",
                    "tuned_lens_trainer", "check_linked_model",  # the last: tests/test_model_access.py
                    # their bad input is tested in their own modules (test_circuit_analysis, test_decoder_lens,
                    # test_future_lens, test_shortcut_grid, test_lens_fitting): they fit or need other models
                    "circuit", "decoder_lens", "future_lens", "shortcut_grid", "fitted_lens", "lens_fit_status",
                    "start_lens_fit", "stop_lens_fit",
                    "patchscope"}  # test_patchscope: a bytes prompt is a BadRequest there, not a BadPrompt


def test_every_analysis_entry_point_is_covered():
    public = {name for name, member in inspect.getmembers(Workbench, inspect.isfunction)
              if not name.startswith("_") and member.__module__ == Workbench.__module__}  # nnsight adds .save
    missing = public - NOT_ENTRY_POINTS - set(ALL_ENTRY_POINTS)
    assert not missing, f"add these Workbench methods to tests/test_bad_input.py's tables: {sorted(missing)}"


# ----------------------------------------------------------------------------- prompts

_rng = random.Random(0)
RANDOM_BYTES = bytes(_rng.randrange(256) for _ in range(300)).decode("utf-8", errors="replace")

BAD_PROMPTS = {  # id: (prompt, error kind, phrase in its message)
    "empty": ("", BadPrompt, "empty"),
    "whitespace": (" \n\t \u3000 ", BadPrompt, "empty"),
    "too_many_chars": ("a" * 8001, BadPrompt, "8,001 characters; the limit is 8,000"),
    "huge": ("x" * (32 << 20), BadPrompt, "characters; the limit"),
    "too_many_tokens": ("one two three " * 100, BadPrompt, "tokens long; the limit"),
    "nul": ("abc\x00def", BadPrompt, "control or binary characters ('\\x00')"),
    "escape_sequence": ("red \x1b[31m text", BadPrompt, "control or binary"),
    "lone_surrogate": ("ab\ud800cd", BadPrompt, "control or binary characters ('\\ud800')"),
    "random_bytes": (RANDOM_BYTES, BadPrompt, "control or binary"),
    "bytes_object": (b"hello", BadPrompt, "must be text, not bytes"),
    "none": (None, BadPrompt, "must be text, not NoneType"),
}


REQUEST_TYPE_CHECKS = {"patching": "'clean' must be text", "sink_levels": "Every prompt in the set must be text"}


@pytest.mark.parametrize("entry", sorted(PROMPT_ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompt_is_refused_everywhere(wb, model_dir, entry, case):
    prompt, kind, phrase = BAD_PROMPTS[case]
    if entry == "concept_depth" and case == "too_many_tokens":
        phrase = "tokens long; with room for noise tokens the limit is"
    not_text = case in ("bytes_object", "none")
    if not_text and entry in REQUEST_TYPE_CHECKS:  # the request itself checks its types
        kind, phrase = BadRequest, REQUEST_TYPE_CHECKS[entry]
    message = refused(wb, lambda: PROMPT_ENTRY_POINTS[entry](wb, model_dir, prompt), kind, phrase)
    if entry == "sink_levels" and not not_text:
        assert message.startswith("Prompt 2 of 2: ")  # which line of the set is bad
    if entry == "concept_depth" and case != "too_many_tokens":
        assert message.startswith("Text 8 of 8: ")


def test_prompt_that_encodes_to_nothing_is_refused(wb, model_dir, monkeypatch):
    model = wb.model(model_dir)
    monkeypatch.setattr(model, "tokenizer", _EmptyTokenizer(model.tokenizer))
    refused(wb, lambda: wb.logit_lens(model_dir, LogitLensRequest("\u200b")), BadPrompt, "gives no tokens")


class _EmptyTokenizer:
    """A tokenizer that drops everything (as some do with characters they cannot represent)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, text, **kwargs):
        return self._inner("", **kwargs) if kwargs.get("return_tensors") else self._inner(text, **kwargs)


# ----------------------------------------------------------------------------- answers / targets

BAD_ANSWERS = {  # id: (answer, error kind, phrase)
    "multi_token": (" Parisxyzzy", BadAnswer, "tokens for"),
    "unknown_word": (" Zqxjkvw", BadAnswer, "not one"),
    "sentence": (" the capital of France", BadAnswer, "Pick a single-token answer"),
    "over_long": (" Paris" * 1000, BadAnswer, "6,000 characters, not one token"),
    "control": ("\x00", BadAnswer, "control or binary"),
    "lone_surrogate": ("\ud800", BadAnswer, "control or binary characters ('\\ud800')"),
}


def _target_calls(answer) -> dict[str, Callable[[Workbench, str], object]]:
    return {
        "logit_lens": lambda wb, m: wb.logit_lens(m, LogitLensRequest(GOOD, target=answer)),
        "compare_lenses": lambda wb, m: wb.compare_lenses(m, GOOD, answer, TunedLensConfig(chunk_tokens=32)),
        "patching_answer": lambda wb, m: wb.patching(m, PatchingRequest(GOOD, CORRUPTED, answer, " John")),
        "patching_wrong": lambda wb, m: wb.patching(m, PatchingRequest(GOOD, CORRUPTED, " Mary", answer)),
        "neuron_search_token": lambda wb, m: wb.neuron_search_token(m, answer),
    }


@pytest.mark.parametrize("entry", sorted(_target_calls("")))
@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_bad_answer_is_refused_everywhere(wb, model_dir, entry, case):
    answer, kind, phrase = BAD_ANSWERS[case]
    refused(wb, lambda: _target_calls(answer)[entry](wb, model_dir), kind, phrase)


@pytest.mark.parametrize("entry", ["patching_answer", "patching_wrong", "neuron_search_token"])
def test_empty_answer_where_one_is_required(wb, model_dir, entry):
    refused(wb, lambda: _target_calls("")[entry](wb, model_dir), BadAnswer, "empty")


def test_multi_token_answer_message_is_short(wb, model_dir):
    answer = " Mary" + "x" * 150  # 151 one-character pieces after ' Mary'
    message = refused(wb, lambda: wb.logit_lens(model_dir, LogitLensRequest(GOOD, target=answer)), BadAnswer,
                      "tokens for", "+ ...")
    assert len(message) < 600


def test_other_bad_options(wb, model_dir):
    refused(wb, lambda: PatchingRequest(GOOD, CORRUPTED, " Mary", " Mary"), BadRequest, "same token")
    refused(wb, lambda: wb.patching(model_dir, PatchingRequest(GOOD, GOOD + " and then some", " Mary", " John")),
            BadPrompt, "same number of tokens")
    refused(wb, lambda: wb.next_token_distribution(model_dir, GOOD, 0), BadRequest, "k must be")
    refused(wb, lambda: wb.next_token_distribution(model_dir, GOOD, 10**9), BadRequest, "k must be")
    refused(wb, lambda: wb.ioi_pairs(model_dir, 0), BadRequest, "at least one IOI pair")
    refused(wb, lambda: wb.neuron_vocab(model_dir, NeuronVocabRequest(99, 0)), BadRequest, "has layers 0..2")
    refused(wb, lambda: wb.neuron_effect(model_dir, NeuronEffectRequest(GOOD, 0, 10**6)), BadRequest, "neurons 0..")
    refused(wb, lambda: wb.sink_levels(model_dir, SinkLevelsRequest(prompts=())), BadRequest, "prompt set is empty")
    refused(wb, lambda: wb.start_tuned_lens_training(model_dir, TunedLensConfig(chunk_tokens=32), 0),
            BadRequest, "steps must be")


# ----------------------------------------------------------------------------- model names

BAD_NAMES = {  # id: (name, phrase)
    "empty": ("", "No model given"),
    "blank": ("   ", "No model given"),
    "none": (None, "No model given"),
    "not_text": (123, "must be text, not int"),
    "unknown": ("no-such-model", "Unknown model 'no-such-model'"),
    "too_many_slashes": ("a/b/c", "Unknown model"),
    "missing_dir": ("/nonexistent/model/dir", "no config.json"),
    "over_long": ("m" * 5000, "(5,000 characters)"),
    "over_long_path": ("/" + "d" * 300, "not a usable model name or directory"),
    "nul": ("bad\x00/name", "Unknown model 'bad\\x00/name'"),
    "lone_surrogate": ("a\ud800b", "Unknown model 'a\\ud800b'"),
    "offline_hub_id": ("some-org/not-in-the-hf-cache", "hub downloads are off"),
}


@pytest.mark.parametrize("entry", sorted(ALL_ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_model_name_is_refused_everywhere(wb, entry, case):
    name, phrase = BAD_NAMES[case]
    message = refused(wb, lambda: ALL_ENTRY_POINTS[entry](wb, name), UnknownModel, phrase)
    assert len(message) < 600


# ----------------------------------------------------------------------------- broken model directories


def _set_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _drop_tensor(directory: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _truncate(directory: Path) -> None:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN = {  # id: (how to break a good directory, error kind, phrases)
    "no_config": (lambda d: (d / "config.json").unlink(), UnknownModel, ("no config.json",)),
    "garbled_config": (lambda d: (d / "config.json").write_text("{ not json"), ModelLoadError,
                       ("Could not read the config", "not a valid JSON file")),
    "config_without_type": (lambda d: (d / "config.json").write_text("[1, 2]"), ModelLoadError,
                            ("Could not read the config", "model_type")),
    "unsupported_architecture": (lambda d: _set_config(d, model_type="mamba", architectures=["MambaForCausalLM"]),
                                 UnsupportedArchitecture, ("'mamba' is not supported", "adapter.py")),
    "unknown_architecture": (lambda d: _set_config(d, model_type="zzz_model"), ModelLoadError,
                             ("Could not read the config", "zzz_model")),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), ModelLoadError, ("no weights",)),
    "truncated_weights": (_truncate, ModelLoadError, ("Could not load the model", "deserializing header")),
    "empty_weights": (lambda d: (d / "model.safetensors").write_bytes(b""), ModelLoadError,
                      ("Could not load the model", "header")),
    "no_tokenizer": (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
                     ModelLoadError, ("no tokenizer",)),
    "shapes_differ": (lambda d: _set_config(d, hidden_size=128), ModelLoadError,
                      ("weight shapes do not match config.json",)),
    "config_has_more_layers": (lambda d: _set_config(d, num_hidden_layers=5), ModelLoadError,
                               ("lacks 18 weight tensor(s)", "model.layers.3", "would be random")),
    "missing_tensor": (_drop_tensor, ModelLoadError, ("lacks 1 weight tensor(s)", "model.layers.1.mlp.up_proj.weight")),
}


@pytest.fixture(scope="module")
def broken_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken_models")
    good = build_model_dir("llama", root / "good", seed=3)
    dirs = {}
    for case, (breaker, _kind, _phrases) in BROKEN.items():
        dirs[case] = Path(shutil.copytree(good, root / case))
        breaker(dirs[case])
    return dirs


# tuned_lens_status reads a checkpoint file only (no model load): a broken directory has no lens, not an error.
LOADING_ENTRY_POINTS = sorted(set(ALL_ENTRY_POINTS) - {"tuned_lens_status"})


@pytest.mark.parametrize("entry", LOADING_ENTRY_POINTS)
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_model_directory_is_refused_everywhere(wb, broken_dirs, entry, case):
    _breaker, kind, phrases = BROKEN[case]
    message = refused(wb, lambda: ALL_ENTRY_POINTS[entry](wb, str(broken_dirs[case])), kind, *phrases)
    assert "Traceback" not in message and len(message) < 700
    assert str(broken_dirs[case]) not in wb.runtime.pool._loaded


def test_fixed_directory_is_read_again(workbench, tmp_path):
    """After a failed load the directory's digest is forgotten, so fixing the files works without a restart."""
    directory = build_model_dir("llama", tmp_path / "model", seed=4)
    weights = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(weights[:100])
    wb = workbench
    refused(wb, lambda: wb.logit_lens(str(directory), LogitLensRequest(GOOD)), ModelLoadError, "Could not load")
    (directory / "model.safetensors").write_bytes(weights)
    result = wb.logit_lens(str(directory), LogitLensRequest(GOOD))
    assert result.top_ids.shape[0] == 4  # embed + 3 blocks: the repaired weights were loaded
    assert wb.local_model(str(directory)).digest == wb.model(str(directory)).digest == _digest(directory)
    assert wb.store.count_results() == 1


def _digest(directory: Path) -> str:
    from workbench.models.catalog import directory_digest

    return directory_digest(directory)


# ----------------------------------------------------------------------------- fuzzing

FUZZ_TEXT = st.text(  # any code point (controls and lone surrogates too), mixed with ordinary text
    alphabet=st.one_of(st.characters(exclude_categories=()), st.sampled_from(" abcMaryJohn\n\t.,é中")),
    max_size=80,
)


@pytest.fixture(scope="module")
def fuzz_wb(tmp_path_factory):
    backend = Workbench(Settings(cache_dir=tmp_path_factory.mktemp("fuzz_cache")))
    yield backend
    backend.close()


def _fuzz_one(fuzz_wb, model_dir: str, text: str, run: Callable[[str], object], analysis: str, accepted: set):
    model = fuzz_wb.model(model_dir)
    try:
        result = run(text)
    except WorkbenchError as exc:
        assert isinstance(exc, BadPrompt), f"{type(exc).__name__}: {exc}"
        assert str(exc).encode("utf-8")
        with pytest.raises(BadPrompt):
            prompts.encode(model, text, fuzz_wb.settings)  # the same verdict as the prompt checks
    else:
        encoded = prompts.encode(model, text, fuzz_wb.settings)
        assert list(result.tokens) == list(encoded.tokens)
        accepted.add(text)
    assert fuzz_wb.store.count_results(analysis) == len(accepted)  # refused prompts store nothing


def test_fuzzed_prompts_through_logit_lens(fuzz_wb, model_dir):
    accepted: set[str] = set()

    @hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(FUZZ_TEXT)
    def check(text):
        def run(t):
            return fuzz_wb.logit_lens(model_dir, LogitLensRequest(t, top_k=3))

        _fuzz_one(fuzz_wb, model_dir, text, run, "logit_lens", accepted)

    check()


def test_fuzzed_prompts_through_attention_sinks(fuzz_wb, model_dir):
    accepted: set[str] = set()

    @hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(FUZZ_TEXT)
    def check(text):
        _fuzz_one(fuzz_wb, model_dir, text, lambda t: fuzz_wb.attention_sinks(model_dir, SinkProbeRequest(prompt=t)),
                  "attention_sinks", accepted)

    check()


# ----------------------------------------------------------------------------- pages (AppTest)

# page, widgets to set (key -> value), submit button key, phrase of the expected message
PAGE_CASES = {
    "logit_lens_binary_prompt": ("logit_lens", {"ll_prompt": "abc\x00def"}, None, "control or binary"),
    "logit_lens_control_target": ("logit_lens", {"ll_target": "\x07"}, None, "control or binary"),
    "depth_use_blank_prompt": ("depth_use", {"du_prompt": " \n "}, None, "The prompt is empty"),
    "sink_probe_too_long": ("attention_sinks", {"sk_prompt": "one two three " * 100},
                            "FormSubmitter:sinks_form-Run sink probe", "tokens long; the limit"),
    "sink_levels_binary_line": ("attention_sinks", {"lv_prompts": "A good prompt\nred \x1b[31m text"},
                                "FormSubmitter:levels_form-Run over the prompt set",
                                "Prompt 2 of 2: The prompt contains control or binary"),
    "patching_multi_token_answer": ("patching", {"pt_answer": " Maryxyzzy"},
                                    "FormSubmitter:patching_form-Run patching", "not one"),
    "patching_empty_wrong": ("patching", {"pt_wrong": ""}, "FormSubmitter:patching_form-Run patching", "empty"),
    "neuron_search_long_token": ("neurons", {"ns_token": " Paris" * 100},
                                 "FormSubmitter:neuron_token_search-Search by top token", "not one token"),
    "neuron_effect_empty_prompt": ("neurons", {"ne_prompt": "   "},
                                   "FormSubmitter:neuron_explorer_form-Explore neuron", "The prompt is empty"),
    "tuned_lens_binary_prompt": ("tuned_lens", {"tl_prompt": "bell \x07 here"},
                                 "FormSubmitter:tl_compare-Compare lenses", "control or binary"),
}


def _set_widget(at, key: str, value: str) -> None:
    for kind in ("text_area", "text_input"):
        try:
            getattr(at, kind)(key=key).input(value)
            return
        except KeyError:
            continue
    raise AssertionError(f"no text widget with key {key!r}")


def shown(markdown: str) -> str:
    """The text a reader sees of an error box's Markdown source: pages escape user text
    (``ui.escape``), and a Markdown backslash escape shows as the character alone."""
    return re.sub(r"\\(.)", r"\1", markdown)


@pytest.mark.parametrize("case", sorted(PAGE_CASES))
def test_bad_input_on_each_page_shows_a_message(app, tiny_dirs, case):
    from tests.page_helpers import open_page

    page, widgets, button, phrase = PAGE_CASES[case]
    at = open_page(app, f"app_pages/{page}.py", str(tiny_dirs["llama"]))
    for key, value in widgets.items():
        _set_widget(at, key, value)
    (at.button(key=button) if button else at.button[0]).click().run()
    assert not at.exception
    errors = [shown(e.value) for e in at.error]
    assert any(phrase in e for e in errors), errors
    assert not at.get("plotly_chart") or page in ("neurons",)  # nothing drawn from a refused request


@pytest.mark.parametrize("page", ["logit_lens", "latent_language", "concept_depth", "depth_use"])
def test_broken_model_directory_on_a_page_shows_a_message(app, broken_dirs, page):
    from tests.page_helpers import open_page

    at = open_page(app, f"app_pages/{page}.py", str(broken_dirs["no_tokenizer"]))
    at.button[0].click().run()
    assert not at.exception
    assert any("no tokenizer" in shown(e.value) for e in at.error), [e.value for e in at.error]
