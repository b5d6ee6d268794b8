"""The axis vocabulary, written once, and the normalised-depth convention.

Every shape comment, array name and label in the workbench uses these axes:

* ``slot``    L + 1 residual-stream states: slot 0 is the input to block 0 (the embedding
              output), slot ``s`` is the output of block ``s - 1``; slot L is the last block's output.
* ``block``   the L transformer blocks; block ``l`` reads slot ``l`` and writes slot ``l + 1``.
* ``seq``     token positions of one prompt.
* ``head``    attention heads of one block.
* ``neuron``  MLP neurons of one block (the input of its output projection).
* ``vocab``   the unembedding's output (token ids).
* ``d_model`` the residual-stream width.

Written ``top_ids: (slot, seq, k) int64`` in shape comments.

Normalised depth (as Jin et al. 2024 compare concept depth across models on l/L): a slot ``s``
sits at ``s / L``; a quantity of block ``l`` (its attention, MLP, neurons, or a probe on its
output) sits at ``(l + 1) / L``, the depth of the slot it writes. So depth 0 is the embedding and
1 the last block's output for every model, and an 18-block and a 30-block model line up.
``LayerSummary`` is one per-layer number of one analysis placed on that axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMBED_LABEL = "embed"


def slot_labels(n_blocks: int) -> np.ndarray:
    """(slot,) str: "embed", "0", ..., str(L - 1): a slot is named after the block that wrote it."""
    return np.array([EMBED_LABEL] + [str(i) for i in range(n_blocks)])


def block_labels(n_blocks: int) -> np.ndarray:
    """(block,) str: "0", ..., str(L - 1)."""
    return np.array([str(i) for i in range(n_blocks)])


def slot_depth(n_blocks: int) -> np.ndarray:
    """(slot,) depth of slots 0..L (embedding .. last block's output)."""
    return np.arange(n_blocks + 1) / n_blocks


def block_depth(n_blocks: int) -> np.ndarray:
    """(block,) depth of blocks 0..L-1 (where each writes into the residual stream)."""
    return (np.arange(n_blocks) + 1) / n_blocks


@dataclass(frozen=True, eq=False)
class LayerSummary:
    """One per-layer number of one analysis on one model, on normalised depth."""

    model_name: str
    analysis: str  # e.g. "logit_lens"
    metric: str  # e.g. "KL(final ‖ layer), last position (nats)"
    depth: np.ndarray  # (point,) float64 in [0, 1]
    values: np.ndarray  # (point,) float64
    layer_labels: tuple[str, ...]  # e.g. ("embed", "0", ...) or ("0", "1", ...)

    def __post_init__(self):
        if not (self.depth.shape == self.values.shape == (len(self.layer_labels),)):
            raise ValueError(f"summary {self.metric}: depth {self.depth.shape}, values {self.values.shape}, "
                             f"{len(self.layer_labels)} labels")

    @classmethod
    def per_block(cls, model_name: str, analysis: str, metric: str, values) -> LayerSummary:
        """A summary with one value per block (at the depth of the slot each block writes)."""
        values = np.asarray(values, dtype=np.float64)
        return cls(model_name, analysis, metric, block_depth(len(values)), values, tuple(block_labels(len(values))))

    @classmethod
    def per_slot(cls, model_name: str, analysis: str, metric: str, values, labels=None) -> LayerSummary:
        """A summary with one value per residual slot (L + 1 values)."""
        values = np.asarray(values, dtype=np.float64)
        labels = tuple(str(x) for x in (slot_labels(len(values) - 1) if labels is None else labels))
        return cls(model_name, analysis, metric, slot_depth(len(values) - 1), values, labels)


def check_shapes(owner: object, expected: dict[str, tuple[int, ...]]) -> None:
    """Raise ValueError naming the first field of ``owner`` whose ``.shape`` is not as expected:
    the one shape check every frozen result runs in its ``__post_init__``."""
    for name, shape in expected.items():
        actual = getattr(owner, name).shape
        if tuple(actual) != tuple(shape):
            raise ValueError(f"{type(owner).__name__}.{name} has shape {tuple(actual)}, expected {tuple(shape)}")
