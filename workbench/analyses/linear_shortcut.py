"""Linear shortcut: the instant learned lens, fitted in closed form instead of trained.

Din, Karidi, Choshen & Geva (2023), "Jump to Conclusions: Short-Cutting Transformers With Linear
Transformations": for every residual slot ``l`` below the last, the affine map ``A_l h_l + b_l``
that best predicts the last slot ``h_L`` in least squares over a text corpus's hidden states,
decoded through the model's own final norm and unembedding (``lenses.fit_linear_shortcut``). It
needs no training loop: one forward pass per eight fitting chunks (``tracing.reduce_slots_batch``)
and one linear solve per slot.

Compared with the logit lens exactly as the tuned lens is (``tuned_lens.compare``): on held-out
text, per slot, KL to the final distribution, top-1 agreement and the next token's perplexity;
on a prompt, a target token's trajectory. The first position of every fitting chunk is left out
(it is an attention sink whose state is unlike the others), as in tuned-lens training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import prompts, tracing
from workbench.analyses.base import Analysis
from workbench.analyses.tuned_lens import LensComparisonResult, compare, corpus_chunks
from workbench.corpus import CORPORA
from workbench.errors import BadRequest
from workbench.lenses import fit_linear_shortcut

NAME = "linear_shortcut"
VERSION = 3  # 2: byte tokens shown as <0x..>; 3: ridge toward the identity
MAX_FIT_CHUNKS = 512
BATCH = 8  # fitting chunks per forward pass
FIT_SHARE = 0.7  # of the progress bar


@dataclass(frozen=True)
class LinearShortcutRequest:
    prompt: str
    target: str = ""
    corpus: str = "python-reference"
    chunk_tokens: int = 64
    fit_chunks: int = 24  # corpus chunks the maps are fitted on ("train" split); more fit better (fit_linear_shortcut)
    eval_chunks: int = 2  # held-out chunks they are compared on ("heldout" split)

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise BadRequest(f"Unknown corpus {self.corpus!r}. Corpora: {', '.join(CORPORA)}.")
        if not 8 <= self.chunk_tokens <= 512:
            raise BadRequest("chunk_tokens must be between 8 and 512.")
        if not 1 <= self.fit_chunks <= MAX_FIT_CHUNKS:
            raise BadRequest(f"fit_chunks must be between 1 and {MAX_FIT_CHUNKS}.")
        if not 1 <= self.eval_chunks <= 64:
            raise BadRequest("eval_chunks must be between 1 and 64.")


def _all_slots(_unembed, states, _real):
    """Every residual slot, (batch, slot, seq, d_model), for ``tracing.reduce_slots_batch``: the
    fitting chunks have equal lengths, so no position is padding."""
    return torch.stack(states, dim=1)


def fit(model, request: LinearShortcutRequest, progress=lambda f, m: None):
    """The fitted ``AffineLens`` of ``model`` on the request's corpus chunks, read ``BATCH`` chunks per
    forward pass (equal lengths, so no padding)."""
    chunks = corpus_chunks(model, request.corpus, "train", request.chunk_tokens, request.fit_chunks)
    if not chunks:
        raise BadRequest("The fitting corpus produced no chunks; use a shorter chunk_tokens.")

    def streams():
        done = 0
        for length in sorted({len(c) for c in chunks}):
            same = [c for c in chunks if len(c) == length]
            for start in range(0, len(same), BATCH):
                batch = torch.stack(same[start:start + BATCH])
                progress(FIT_SHARE * done / len(chunks),
                         f"Fitting the linear shortcuts: chunks {done + 1}-{done + len(batch)} of {len(chunks)}")
                states = tracing.reduce_slots_batch(model, batch.tolist(), _all_slots)[:, :, 1:]  # no sink position
                done += len(batch)
                yield states.transpose(0, 1).reshape(states.shape[1], -1, states.shape[-1])

    return fit_linear_shortcut(streams(), model.info.n_layers + 1, model.info.d_model)


def check(request: LinearShortcutRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: LinearShortcutRequest, progress) -> LensComparisonResult:
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    target_id = prompts.single_token_id(model, request.target) if request.target else None
    lens = fit(model, request, progress)
    held_out = corpus_chunks(model, request.corpus, "heldout", request.chunk_tokens, request.eval_chunks)

    def compare_progress(fraction, message):
        progress(None if fraction is None else FIT_SHARE + (1 - FIT_SHARE) * fraction, message)

    with torch.no_grad():
        return compare(model, lens, request, held_out, residuals=lambda ids: tracing.residual_stream(model, ids).resid,
                       prompt_ids=encoded.ids, tokens=encoded.tokens, target_id=target_id, progress=compare_progress,
                       lens_name="linear shortcut", on_partial=ctx.partial)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Linear shortcut vs logit lens", Request=LinearShortcutRequest,
    Result=LensComparisonResult, run=run, check=check,
)
