"""Top-activating contexts of every MLP neuron over a small bundled corpus.

The activation-based view that complements the weight-based classes of ``neurons``
(Gerstner & Schütze 2025) and the key/value reading of Geva et al. (2021),
"Transformer Feed-Forward Layers Are Key-Value Memories" (the keys are found through
the contexts that trigger them).

The corpus (``workbench/data/corpus.txt``, written for this project) is tokenized as one
stream and cut into chunks of ``chunk_tokens`` tokens, each prefixed with what the
tokenizer puts before a text (Gemma's ``<bos>``, nothing for SmolLM2); the last partial
chunk is dropped. Chunks run in batches; for every (block, neuron) a running top-k of the
activation's magnitude (the input of the MLP's output projection; gated neurons fire with
either sign, so the strongest contexts of both signs compete; the stored value keeps its
raw sign, before any sign normalisation) keeps where it happened. The first position of
every chunk is left out (``SKIPPED_POSITIONS``). The result, not the
(large) raw activations, is what the store caches, keyed by the model digest and the
corpus digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench import prompts, tracing
from workbench.analyses.base import Analysis
from workbench.errors import BadRequest
from workbench.models.loader import LoadedModel

NAME = "neuron_contexts"
VERSION = 4  # 4: byte tokens shown as <0x..>
CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"
MAX_CHUNK_TOKENS = 64
MAX_TOP_K = 20
# Position 0 of a chunk is the attention-sink position (Gemma's <bos>; SmolLM2, which gets no
# <bos>, makes the chunk's first token its sink) and its activations are outliers that would
# win every neuron's top-k (seen on SmolLM2: the same first-token contexts for every neuron).
SKIPPED_POSITIONS = 1


@dataclass(frozen=True)
class NeuronContextsRequest:
    corpus_digest: str  # sha256 of the corpus text (see ``corpus_digest``): a new corpus, a new key
    chunk_tokens: int = MAX_CHUNK_TOKENS
    top_k: int = 8
    batch_size: int = 8

    def __post_init__(self):
        if not 8 <= self.chunk_tokens <= MAX_CHUNK_TOKENS:
            raise BadRequest(f"chunk_tokens must be between 8 and {MAX_CHUNK_TOKENS}, got {self.chunk_tokens}.")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}.")
        if not 1 <= self.batch_size <= 32:
            raise BadRequest(f"batch_size must be between 1 and 32, got {self.batch_size}.")


@dataclass(frozen=True, eq=False)
class NeuronContextsResult:
    model_name: str
    chunk_tokens: np.ndarray  # (chunks, chunk_len) str: each token of each chunk, decoded alone
    top_values: np.ndarray  # (block, neuron, k) float32, signed, by descending magnitude
    top_chunk: np.ndarray  # (block, neuron, k) int32: chunk of each top activation
    top_position: np.ndarray  # (block, neuron, k) int32: position within the chunk

    def __post_init__(self):
        shape = self.top_values.shape
        for name in ("top_chunk", "top_position"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"NeuronContextsResult.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.chunk_tokens.ndim != 2:
            raise ValueError("NeuronContextsResult.chunk_tokens must be (chunks, chunk_len)")



def corpus_text(path: Path = CORPUS_PATH) -> str:
    return path.read_text(encoding="utf-8")


def corpus_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_chunks(model: LoadedModel, text: str, chunk_tokens: int) -> torch.Tensor:
    """(chunks, chunk_tokens) token ids: the tokenizer's own prefix, then a slice of the stream."""
    prefix = list(model.tokenizer("").input_ids)  # [<bos>] for Gemma, [] for SmolLM2
    stream = model.tokenizer(text, add_special_tokens=False).input_ids
    body = chunk_tokens - len(prefix)
    n_chunks = len(stream) // body
    if n_chunks == 0:
        raise BadRequest(f"The corpus is shorter than one chunk of {chunk_tokens} tokens.")
    rows = [prefix + stream[i * body : (i + 1) * body] for i in range(n_chunks)]
    return torch.tensor(rows, dtype=torch.long)


def update_top_k(
    values: torch.Tensor, where: torch.Tensor, acts: torch.Tensor, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a batch of activations (block, token, neuron) into the running (block, k, neuron)
    top-k by magnitude ``values`` whose flat token indices are ``where``; new tokens are numbered
    from ``offset``."""
    n_tokens = acts.shape[1]
    index = torch.arange(offset, offset + n_tokens).view(1, n_tokens, 1).expand_as(acts)
    all_values = torch.cat([values, acts], dim=1)
    all_where = torch.cat([where, index], dim=1)
    top = all_values.abs().topk(min(k, all_values.shape[1]), dim=1)  # strongest either sign
    return all_values.gather(1, top.indices), all_where.gather(1, top.indices)


def compute(
    model: LoadedModel,
    request: NeuronContextsRequest,
    text: str,
    progress: Callable[[float | None, str], None] = lambda f, m: None,
) -> NeuronContextsResult:
    if corpus_digest(text) != request.corpus_digest:
        raise BadRequest("The corpus text does not match the request's corpus_digest.")
    chunks = corpus_chunks(model, text, request.chunk_tokens)
    n_chunks, chunk_len = chunks.shape
    values = where = None
    for start in range(0, n_chunks, request.batch_size):
        batch = chunks[start : start + request.batch_size]
        acts = tracing.mlp_activations(model, batch)  # (block, batch, seq, neuron)
        acts[:, :, :SKIPPED_POSITIONS] = 0.0  # never a top context: see SKIPPED_POSITIONS
        acts = acts.reshape(acts.shape[0], -1, acts.shape[-1])  # (block, token, neuron)
        if values is None:
            values = torch.full((acts.shape[0], 0, acts.shape[-1]), -torch.inf)
            where = torch.zeros((acts.shape[0], 0, acts.shape[-1]), dtype=torch.long)
        values, where = update_top_k(values, where, acts, start * chunk_len, request.top_k)
        done = min(start + request.batch_size, n_chunks)
        progress(done / n_chunks, f"Ran {done} of {n_chunks} corpus chunks")
    where = where.transpose(1, 2).numpy()  # (block, neuron, k)
    tokens = np.array([prompts.token_strings(model, row) for row in chunks])
    return NeuronContextsResult(
        model_name=model.name,
        chunk_tokens=tokens,
        top_values=values.transpose(1, 2).numpy().astype(np.float32),
        top_chunk=(where // chunk_len).astype(np.int32),
        top_position=(where % chunk_len).astype(np.int32),
    )


def contexts_of(result: NeuronContextsResult, layer: int, neuron: int, before: int = 12, after: int = 3):
    """[(activation, left text, token, right text)] of one neuron's top contexts, strongest first."""
    rows = []
    for value, chunk, pos in zip(result.top_values[layer, neuron], result.top_chunk[layer, neuron],
                                 result.top_position[layer, neuron], strict=True):
        tokens = result.chunk_tokens[chunk]
        rows.append((float(value), "".join(tokens[max(0, pos - before) : pos]), str(tokens[pos]),
                     "".join(tokens[pos + 1 : pos + 1 + after])))
    return rows


def default_request() -> NeuronContextsRequest:
    """The request over the bundled corpus."""
    return NeuronContextsRequest(corpus_digest(corpus_text()))


def run(ctx, request: NeuronContextsRequest, progress) -> NeuronContextsResult:
    """Top-activating contexts of every neuron over the bundled corpus (the one whose digest it names)."""
    return compute(ctx.model, request, corpus_text(), progress)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Top-activating contexts of every neuron", Request=NeuronContextsRequest,
    Result=NeuronContextsResult, run=run,
)
