"""Concept depth on the real bundled models (slow): batched extraction equals unbatched, and the
factual task becomes readable in the middle of SmolLM2, not at its first blocks (small subsets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import concept_datasets, tracing
from workbench.analyses.concept_depth import ConceptDepthRequest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_batched_extraction_equals_unbatched_on_real_models(workbench, name):
    model = workbench.model(name)
    texts = concept_datasets.builtin("inferential").texts[:3] + concept_datasets.builtin("emotional").texts[:3]
    sequences = [model.tokenizer(t).input_ids for t in texts]
    assert len({len(s) for s in sequences}) > 1  # the batch really is padded
    for site in tracing.LAST_TOKEN_SITES:
        batched = tracing.last_token_states(model, sequences, site)
        single = torch.cat([tracing.last_token_states(model, [s], site) for s in sequences], dim=1)
        scale = single.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1.0)  # Gemma's residual reaches 1e3+
        assert ((batched - single).abs() / scale).max() < 1e-4


def test_factual_truth_is_readable_in_the_middle_of_smollm2(workbench):
    data = concept_datasets.builtin("factual").subset(120)
    result = workbench.concept_depth("smollm2-135m", ConceptDepthRequest(data.name, data.texts, data.labels))
    assert result.n_layers == 30 and result.n_test == 36
    assert result.accuracy.max() >= 0.75 and result.roc_auc.max() >= 0.8
    assert 5 <= result.best_layer and 5 <= result.depth_layer <= 20
    assert np.mean(result.accuracy[:5]) < result.accuracy.max() - 0.15  # the first blocks cannot read it
