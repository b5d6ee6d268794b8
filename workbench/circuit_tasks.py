"""Circuit tasks: sets of clean/corrupted prompt pairs, batched, and the task metric.

Owns turning a task's prompt pairs (``prompt_pairs.PromptPair``) into one right-padded batch
(``PairBatch``) and the metric every circuit analysis reports. Within a pair the clean and the
corrupted prompt have the same number of tokens (positions align, as patching needs); different
pairs may differ in length: shorter ones are right-padded, masked out of attention, and read at their
own last real token, so a padded batch gives every pair the numbers it gives alone.

Task metric (after Wang et al. 2023 and Hanna et al. 2024, normalised over the whole task rather than
per pair, so a pair with a tiny clean-corrupted gap cannot blow it up)::

    LD_i = logit(answer_i) - logit(wrong_i) at pair i's last token
    M    = sum_i (LD_i - LD_i^corr) / sum_i (LD_i^clean - LD_i^corr)

``M`` is 0 on the corrupted runs and 1 on the clean runs, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.config import Settings
from workbench.errors import BadRequest, WorkbenchError
from workbench.prompt_pairs import PromptPair, encode_pair


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
