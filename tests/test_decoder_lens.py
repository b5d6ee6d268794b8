"""DecoderLens (Langedijk et al. 2024) on tiny random T5 and BART directories: the last encoder slot is the
model's own greedy generation, every row is a greedy decode of its own encoder slot, batching slots changes
nothing, bad input and decoder-only models are refused with a message, and the page draws the table."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.modeling_outputs import BaseModelOutput

from tests.page_helpers import chart_specs, decode_plotly, open_page
from tests.tiny_models import SEQ2SEQ_ARCHITECTURES
from workbench.analyses import ANALYSES, decoder_lens, logit_lens, request_from_json
from workbench.analyses.decoder_lens import DecoderLensRequest, encoder_slots
from workbench.errors import BadPrompt, BadRequest, UnsupportedArchitecture
from workbench.models import adapter

PROMPT = "The capital of France is Paris."


def _reference(directory: str):
    """The directory's model and tokenizer, loaded by plain transformers (not through the workbench)."""
    return AutoModelForSeq2SeqLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def _reference_slots(hf_model, spec, ids: torch.Tensor) -> torch.Tensor:
    """Every encoder slot from transformers' own ``output_hidden_states``: the states before each block
    (un-normalised) through the encoder's final norm, then the encoder's output itself."""
    with torch.no_grad():
        out = hf_model(input_ids=ids, decoder_input_ids=ids[:, :1], output_hidden_states=True)
        before = torch.cat(out.encoder_hidden_states[:-1])
        if spec.encoder.final_norm:
            before = hf_model.get_submodule(spec.encoder.final_norm)(before)
    return torch.cat([before, out.encoder_last_hidden_state])


@pytest.mark.parametrize("arch", SEQ2SEQ_ARCHITECTURES)
def test_last_slot_is_the_models_own_greedy_generation(arch, seq2seq_dirs, workbench):
    result = workbench.decoder_lens(seq2seq_dirs[arch], DecoderLensRequest(PROMPT, max_new_tokens=10))
    hf_model, tokenizer = _reference(seq2seq_dirs[arch])
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf_model.generate(input_ids=ids, do_sample=False, num_beams=1, max_new_tokens=10, output_scores=True,
                                output_logits=True, return_dict_in_generate=True)
    n_layers = len(hf_model.get_submodule(adapter.encoder_decoder_spec(arch).encoder.layers))
    assert result.n_layers == n_layers == 2
    assert result.slots.tolist() == [0, 1, 2] and result.slot_labels.tolist() == ["embed", "0", "1"]
    generated = ref.sequences[0, 1:]  # after the decoder start token
    length = int(result.lengths[-1])
    assert 2 <= length <= 10
    assert result.token_ids[-1, :length].tolist() == generated[:length].tolist()
    assert (result.token_ids[-1, length:] == -1).all() and np.isnan(result.probs[-1, length:]).all()
    # probabilities: the model's softmax of its own raw logits at the chosen tokens
    raw = torch.log_softmax(torch.cat(ref.logits).double(), -1)[torch.arange(length), generated[:length]]
    np.testing.assert_allclose(result.probs[-1, :length], raw.exp().numpy(), rtol=0, atol=2e-6)
    assert result.logprob[-1] == pytest.approx(float(raw.sum()), abs=1e-4)
    # greedy: each chosen token is the top of generate's scores (after its generation rules)
    assert [int(s[0].argmax()) for s in ref.scores[:length]] == generated[:length].tolist()
    assert result.texts[-1] == tokenizer.decode(generated[:length], skip_special_tokens=True)
    assert "".join(result.tokens[-1, :length]) != "" and (result.tokens[-1, length:] == "").all()


@pytest.mark.parametrize("arch", SEQ2SEQ_ARCHITECTURES)
def test_every_row_is_the_greedy_decode_of_its_own_slot(arch, seq2seq_dirs, workbench):
    """Slots from transformers' own hidden states (the encoder's final norm applied); each row, fed back
    teacher-forced, has the reported probabilities and is the argmax at every step generation left free;
    the intermediate slots decode to other sequences than the encoder output on this random model."""
    result = workbench.decoder_lens(seq2seq_dirs[arch], DecoderLensRequest(PROMPT, max_new_tokens=8))
    hf_model, tokenizer = _reference(seq2seq_dirs[arch])
    spec = adapter.encoder_decoder_spec(arch)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    slots = _reference_slots(hf_model, spec, ids)
    mine = encoder_slots(workbench.runtime.encoder_decoder_model(seq2seq_dirs[arch]), ids[0])
    torch.testing.assert_close(mine, slots, rtol=0, atol=1e-5)
    if spec.encoder.final_norm:  # the final norm matters: without it the slots below the last differ
        assert (torch.cat(_raw_states(hf_model, ids)) - slots[:-1]).abs().max() > 1e-2
    forced_end = hf_model.generation_config.forced_eos_token_id  # BART: the end token at the length limit
    start = hf_model.generation_config.decoder_start_token_id
    for row, slot in enumerate(result.slots):
        length = int(result.lengths[row])
        chosen = torch.tensor(result.token_ids[row, :length])
        decoder_in = torch.cat([torch.tensor([start]), chosen[:-1]]).unsqueeze(0)
        with torch.no_grad():
            logits = hf_model(encoder_outputs=BaseModelOutput(last_hidden_state=slots[slot:slot + 1]),
                              decoder_input_ids=decoder_in).logits[0].double()
        probs = torch.softmax(logits, -1)
        np.testing.assert_allclose(result.probs[row, :length], probs[torch.arange(length), chosen].numpy(),
                                   rtol=0, atol=2e-6)
        free = length - 1 if forced_end is not None and length == 8 else length
        assert logits[:free].argmax(-1).tolist() == chosen[:free].tolist(), (arch, slot)
    for row in range(len(result.slots) - 1):
        assert result.token_ids[row].tolist() != result.token_ids[-1].tolist(), (arch, row)
        assert result.logprob[row] != pytest.approx(result.logprob[-1], abs=1e-3)


def _raw_states(hf_model, ids):
    with torch.no_grad():
        out = hf_model(input_ids=ids, decoder_input_ids=ids[:, :1], output_hidden_states=True)
    return [h for h in out.encoder_hidden_states[:-1]]


@pytest.mark.parametrize("arch", SEQ2SEQ_ARCHITECTURES)
def test_a_subset_of_slots_equals_those_rows_of_all(arch, seq2seq_dirs, workbench):
    full = workbench.decoder_lens(seq2seq_dirs[arch], DecoderLensRequest(PROMPT, max_new_tokens=6))
    part = workbench.decoder_lens(seq2seq_dirs[arch], DecoderLensRequest(PROMPT, max_new_tokens=6, slots=(2, 0)))
    assert part.slots.tolist() == [0, 2] and part.slot_labels.tolist() == ["embed", "1"]
    for row, slot in enumerate(part.slots):
        length = int(part.lengths[row])
        assert length == full.lengths[slot]
        assert part.tokens[row].tolist() == full.tokens[slot, :part.tokens.shape[1]].tolist()
        assert part.token_ids[row, :length].tolist() == full.token_ids[slot, :length].tolist()
        np.testing.assert_allclose(part.probs[row, :length], full.probs[slot, :length], rtol=0, atol=1e-5)


def test_result_is_cached_and_draws_its_figures(seq2seq_dirs, workbench):
    request = DecoderLensRequest(PROMPT, max_new_tokens=5)
    first = workbench.decoder_lens(seq2seq_dirs["t5"], request)
    again = workbench.decoder_lens(seq2seq_dirs["t5"], request)
    assert workbench.store.count_results("decoder_lens") == 1
    for field in dataclasses.fields(first):
        a, b = getattr(first, field.name), getattr(again, field.name)
        same = np.array_equal(a, b, equal_nan=a.dtype.kind == "f") if isinstance(a, np.ndarray) else a == b
        assert same, field.name
    table = decoder_lens.ANALYSIS.figure("table", first)
    heat = table.data[0]
    assert np.asarray(heat.z).shape == first.token_ids.shape
    rows = int(first.lengths[-1])
    assert [t for t in heat.text[-1][:rows]] != [""] * rows  # the last row's tokens are written in its cells
    assert "seq2seq-t5" in table.layout.title.text and "sequence log p" in heat.customdata[-1][0]
    curve = decoder_lens.ANALYSIS.figure("sequence_logprob", first)
    np.testing.assert_allclose(curve.data[0].y, first.logprob)


def test_bad_input_is_refused_with_a_message(seq2seq_dirs, workbench):
    for fields, message in (({"max_new_tokens": 0}, "between 1 and 64"),
                            ({"max_new_tokens": 65}, "between 1 and 64"),
                            ({"slots": (0, 0)}, "once"), ({"slots": (-1,)}, "whole numbers from 0"),
                            ({"max_new_tokens": True}, "whole number")):
        with pytest.raises(BadRequest, match=message):
            DecoderLensRequest(PROMPT, **fields)
    with pytest.raises(BadRequest, match=r"slots\[0\] must be int"):
        request_from_json(DecoderLensRequest, {"prompt": PROMPT, "slots": [1.5]})
    with pytest.raises(BadRequest, match="slots"):
        request_from_json(DecoderLensRequest, {"prompt": PROMPT, "slots": "1"})
    with pytest.raises(BadPrompt, match="empty"):
        workbench.decoder_lens(seq2seq_dirs["t5"], DecoderLensRequest("   "))
    with pytest.raises(BadRequest, match=r"Encoder slot 3 does not exist: seq2seq-t5 has 2 encoder layers"):
        workbench.decoder_lens(seq2seq_dirs["t5"], DecoderLensRequest(PROMPT, slots=(1, 3)))
    assert workbench.store.count_results() == 0


def test_decoder_only_models_are_refused_and_seq2seq_models_still_refused_elsewhere(seq2seq_dirs, tiny_dirs,
                                                                                      workbench):
    needs = r"decoder-only model \('llama'\); this analysis needs an encoder-decoder model \(T5, BART\)"
    with pytest.raises(UnsupportedArchitecture, match=needs):
        workbench.decoder_lens(str(tiny_dirs["llama"]), DecoderLensRequest(PROMPT))
    for arch in SEQ2SEQ_ARCHITECTURES:  # every decoder-only analysis keeps its one message
        with pytest.raises(UnsupportedArchitecture, match=rf"'{arch}' is an encoder-decoder model"):
            workbench.logit_lens(seq2seq_dirs[arch], logit_lens.LogitLensRequest(PROMPT))
    assert workbench.store.count_results() == 0


class _Stop(Exception):
    pass


def test_a_run_reports_every_decoded_token_and_stops_when_its_progress_raises(seq2seq_dirs, workbench):
    seen: list[tuple[float | None, str]] = []

    def progress(fraction, message):
        seen.append((fraction, message))
        if "decoded token 3 " in message:
            raise _Stop  # what the runtime's progress does when the user cancels

    with pytest.raises(_Stop):
        workbench.decoder_lens(seq2seq_dirs["t5"], DecoderLensRequest(PROMPT, max_new_tokens=10), progress)
    decoded = [message for _, message in seen if "decoded token" in message]
    assert decoded == [f"DecoderLens: decoded token {i} of at most 10" for i in (1, 2, 3)]
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1
    assert workbench.store.count_results() == 0  # a cancelled run leaves nothing behind


def test_only_the_decoder_lens_declares_encoder_decoder_models():
    assert [analysis.name for analysis in ANALYSES if analysis.encoder_decoder] == ["decoder_lens"]


def test_decode_cost_per_token_is_reported(seq2seq_dirs, workbench, capsys):
    """Rough cost of the lens against one plain forward pass (encoder + one decoder step) of the model."""
    model = workbench.runtime.encoder_decoder_model(seq2seq_dirs["t5"])
    ids = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        model.hf_model(input_ids=ids, decoder_input_ids=ids[:, :1])
        started = time.perf_counter()
        for _ in range(20):
            model.hf_model(input_ids=ids, decoder_input_ids=ids[:, :1])
        forward = (time.perf_counter() - started) / 20
    request = DecoderLensRequest(PROMPT, max_new_tokens=12)
    started = time.perf_counter()
    result = workbench.decoder_lens(seq2seq_dirs["t5"], request)
    lens = time.perf_counter() - started
    tokens = int(result.token_ids.shape[1])
    with capsys.disabled():
        print(f"\nDecoderLens on tiny T5: {len(result.slots)} slots x {tokens} tokens in {lens * 1e3:.0f} ms; "
              f"{lens / tokens / forward:.1f} forward passes per generated token (all slots together)")
    assert tokens == 12 and lens > 0


def test_page_draws_the_table_on_a_t5_directory(app, seq2seq_dirs):
    at = open_page(app, "app_pages/decoder_lens.py", seq2seq_dirs["t5"])
    at.text_area(key="dl_prompt").input(PROMPT)
    at.number_input(key="dl_max_new_tokens").set_value(4)
    at.button[0].click().run()
    table, logprob = chart_specs(at)
    heat = table["data"][0]
    assert heat["type"] == "heatmap" and len(heat["text"]) == 3  # one row per encoder slot of the tiny T5
    assert decode_plotly(heat["z"]).shape == (3, 4)
    assert len(decode_plotly(logprob["data"][0]["y"])) == 3


def test_page_explains_what_a_decoder_only_model_needs(app):
    at = app.switch_page("app_pages/decoder_lens.py").run()  # the default (bundled, decoder-only) model
    assert not at.exception and not at.error
    assert "needs an encoder-decoder model" in at.info[0].value and "Other" in at.info[0].value
    assert not at.get("plotly_chart") and not at.button
