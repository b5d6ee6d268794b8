"""RelP on the real bundled models (slow): rules keep the logits, relevance is conserved, and the
default model prefers the indirect object on the IOI pair."""

from __future__ import annotations

import pytest

from workbench import interventions, prompt_pairs
from workbench.analyses import patching
from workbench.interventions import SITES, Rules

pytestmark = pytest.mark.slow
PAIR = prompt_pairs.ioi_pair("When {io} and {s} went to the store, {s} gave a drink to", "Mary", "John")


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_relp_on_real_model(workbench, name):
    model = workbench.model(name)
    pair = prompt_pairs.encode_pair(model, PAIR, workbench.settings)
    _, clean_logits = interventions.record(model, pair.clean_ids, ())
    _, corrupted_logits = interventions.record(model, pair.corrupted_ids, ())
    ld_clean = patching.logit_diff(clean_logits, pair.answer_id, pair.wrong_id)
    ld_corrupted = patching.logit_diff(corrupted_logits, pair.answer_id, pair.wrong_id)
    assert ld_clean > 0 > ld_corrupted  # the model does IOI: " Mary" on clean, " John" on corrupted
    metric = patching.metric_fn(pair.answer_id, pair.wrong_id, ld_corrupted, ld_clean)
    rules = Rules(ln=True, identity=True, half=True, attention=True)
    grad_pass = interventions.gradient_pass(model, pair.corrupted_ids, metric, SITES, rules)
    assert (grad_pass.logits - corrupted_logits).abs().max() < 1e-5
    assert grad_pass.metric == pytest.approx(0.0, abs=1e-5)
    for layer in range(model.info.n_layers):
        resid = (grad_pass.values[("resid", layer)].double() * grad_pass.grads[("resid", layer)].double()).sum()
        total = float(resid) + float(grad_pass.bias_relevance[layer:].sum())
        assert total == pytest.approx(grad_pass.output_relevance, rel=1e-3), layer
