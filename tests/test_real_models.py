"""The real bundled models through the catalog (slow: the first run converts the GGUF)."""

from __future__ import annotations

import pytest
import torch

from workbench import prompts, tracing
from workbench.analyses.logit_lens import LogitLensRequest

pytestmark = pytest.mark.slow
FRANCE = "The capital of France is"


def test_default_model_predicts_paris(workbench):
    top = workbench.next_token_distribution("smollm2-135m", FRANCE, k=3)
    assert top[0][0] == " Paris"
    assert top[0][1] == pytest.approx(0.773, abs=0.01)  # STACK.md reference for the dequantized weights
    model = workbench.model("smollm2-135m")
    assert (model.info.n_layers, model.info.d_model, model.info.vocab_size) == (30, 576, 49152)


def test_default_model_lens_last_layer_is_the_output(workbench):
    result = workbench.logit_lens("smollm2-135m", LogitLensRequest(FRANCE, target=" Paris"))
    assert result.top_tokens[-1, -1, 0] == " Paris" and result.target_rank[-1] == 1
    assert result.kl_to_final[-1, -1] == pytest.approx(0.0, abs=1e-9)
    assert result.kl_to_final[0, -1] > 1.0  # the embedding row is far from the output


def test_gemma_loads_with_bos_and_matches_its_logits(workbench):
    model = workbench.model("gemma3-270m")
    encoded = prompts.encode(model, FRANCE, workbench.settings)
    assert encoded.tokens[0] == "<bos>"
    assert (model.info.n_layers, model.info.d_model) == (18, 640)
    trace = tracing.residual_stream(model, encoded.ids)
    torch.testing.assert_close(model.decode(trace.resid[-1]), trace.logits, rtol=0, atol=1e-4)
    top = workbench.next_token_distribution("gemma3-270m", FRANCE, k=5)
    assert " Paris" in [token for token, _ in top]


def test_gemma_translation_passes_through_english(workbench):
    """Wendler et al.'s finding on the real Gemma: English peaks in middle layers before French wins."""
    from workbench.analyses.latent_language import LatentLanguageRequest

    result = workbench.latent_language(
        "gemma3-270m", LatentLanguageRequest(task="translation", source_lang="de", target_lang="fr", max_prompts=12)
    )
    english, french = result.p_pivot.mean(0), result.p_answer.mean(0)
    assert english.argmax() < french.argmax()
    assert english.max() > 0.05 and french[-1] > english[-1]
