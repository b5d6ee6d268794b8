"""Latent language: prompt construction, the single-token filter, and agreement with the logit lens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import prompts, tracing
from workbench.analyses import latent_language
from workbench.analyses.latent_language import LatentLanguageRequest, build_prompts, usable_prompts
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.errors import BadRequest


@pytest.mark.parametrize("task", latent_language.TASKS)
def test_prompts_end_at_the_answer_and_hold_out_demonstrations(task):
    request = LatentLanguageRequest(task=task, target_lang="de", source_lang="fr")
    specs = build_prompts(request)
    demo_words = {w["de"] for w in latent_language.dataset()["demonstrations"]}
    assert specs and all(spec.text.endswith('"') for spec in specs)
    assert not demo_words & {spec.answer for spec in specs}
    assert all(spec.text.count("\n") >= 2 for spec in specs)  # few-shot
    if task == "translation":
        katze = next(spec for spec in specs if spec.answer == "Katze")
        assert katze.text.endswith('Français: "chat" - Deutsch: "') and katze.pivot == "cat"
    if task == "repetition":
        assert all(spec.text.endswith(f'Deutsch: "{spec.answer}" - Deutsch: "') for spec in specs)


def test_single_token_filter_and_limit():
    request = LatentLanguageRequest(task="repetition", target_lang="fr", max_prompts=3)
    ids = {"chat": 1, "cat": 2, "chien": 3, "dog": 3, "eau": 4, "water": 5, "feu": 6, "fire": 7, "pain": 8, "bread": 9}
    usable, skipped = usable_prompts(request, lambda prefix, word: ids.get(word))
    assert [u.spec.answer for u in usable] == ["eau", "feu", "chat"]  # data order, first three usable
    assert [(u.answer_id, u.pivot_id) for u in usable] == [(4, 5), (6, 7), (1, 2)]
    assert "chien" in skipped  # same token as its pivot
    assert "livre" in skipped  # not a single token
    assert "pain" not in skipped  # usable, only cut by max_prompts


def test_last_position_lens_equals_decoding_the_recorded_stream(workbench, tiny_dir):
    model = workbench.model(str(tiny_dir))
    ids = prompts.encode(model, "When Mary and John went to the store", workbench.settings).ids
    probs, top1 = latent_language.last_position_lens(model, ids, (3, 5, 3))
    reference = torch.softmax(model.decode(tracing.residual_stream(model, ids).resid[:, -1]).double(), dim=-1)
    assert probs.shape == (model.info.n_layers + 1, 3) and probs.dtype == torch.float64
    torch.testing.assert_close(probs, reference[:, [3, 5, 3]], rtol=1e-4, atol=1e-8)
    assert torch.equal(top1, reference.argmax(-1))
    # the last slot is the model's own next-token distribution
    final = torch.softmax(tracing.forward_logits(model, ids)[-1].double(), -1)
    torch.testing.assert_close(probs[-1], final[[3, 5, 3]], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("fields", [
    {"task": "summarise"}, {"target_lang": "xx"}, {"target_lang": "en", "pivot_lang": "en"},
    {"task": "translation", "source_lang": "fr", "target_lang": "fr"}, {"task": "cloze", "target_lang": "it"},
    {"max_prompts": 0},
])
def test_bad_requests(fields):
    with pytest.raises(BadRequest):
        LatentLanguageRequest(**fields)


TINY_DATA = {
    "languages": {"en": "English", "fr": "Français"},
    # single tokens after a quote in the tiny tokenizer, but "Mary": two tokens -> skipped
    "words": [{"en": "The", "fr": "When"}, {"en": "One", "fr": "Alice"}, {"en": "Mary", "fr": "of"}],
    "demonstrations": [{"en": "store", "fr": "park"}],
    "cloze": {}, "cloze_demonstrations": {},
}


def test_agrees_with_the_logit_lens_on_a_tiny_model(workbench, tiny_dirs, monkeypatch):
    monkeypatch.setattr(latent_language, "dataset", lambda: TINY_DATA)
    name = str(tiny_dirs["llama"])
    request = LatentLanguageRequest(task="translation", target_lang="fr", source_lang="en", pivot_lang="en",
                                    max_prompts=10)
    monkeypatch.setattr(LatentLanguageRequest, "__post_init__", lambda self: None)  # tiny languages only
    result = workbench.latent_language(name, request)
    assert result.answers.tolist() == ["When", "Alice"] and result.skipped.tolist() == ["of"]
    for i, prompt in enumerate(result.prompts):
        lens = workbench.logit_lens(name, LogitLensRequest(prompt, target=result.answers[i]))
        np.testing.assert_allclose(result.p_answer[i], lens.target_prob, rtol=1e-4, atol=1e-7)
        assert result.final_correct[i] == (lens.top_tokens[-1, -1, 0] == result.answers[i])
    assert result.layer_labels[0] == "embed" and len(result.layer_labels) == 4
