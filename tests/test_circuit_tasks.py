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
    def ld(ids):
        with torch.no_grad():
            logits = model.hf_model(input_ids=ids, attention_mask=batch.attention_mask).logits
        return logit_diffs(last_logits(logits, batch), batch)

    ld_clean, ld_corr = ld(batch.clean_ids), ld(batch.corrupted_ids)
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
