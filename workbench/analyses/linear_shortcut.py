"""Linear shortcut: the instant learned lens, fitted in closed form instead of trained.

Din, Karidi, Choshen & Geva (2023), "Jump to Conclusions: Short-Cutting Transformers With Linear
Transformations": for every residual slot ``l`` below the last, the affine map ``A_l h_l + b_l``
that best predicts the last slot ``h_L`` in least squares over a text corpus's hidden states,
decoded through the model's own final norm and unembedding (``lenses.fit_linear_shortcut``). It
needs no training loop: one forward pass per eight fitting chunks (``tracing.reduce_slots_batch``)
and one linear solve per slot. The fitted maps are stored and reused across sessions
(``lens_fitting``, through ``ctx.fitted_lens``): a second request with another prompt or held-out
size on the same corpus settings loads them instead of fitting again.

Compared with the logit lens exactly as the tuned lens is (``tuned_lens.compare``): on held-out
text, per slot, KL to the final distribution, top-1 agreement and the next token's perplexity;
on a prompt, a target token's trajectory. The first position of every fitting chunk is left out
(it is an attention sink whose state is unlike the others), as in tuned-lens training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench import lens_fitting, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.analyses.tuned_lens import LensComparisonResult, compare, corpus_chunks
from workbench.corpus import CORPORA
from workbench.errors import BadRequest
from workbench.lens_fitting import FitConfig

NAME = "linear_shortcut"
VERSION = 3  # 2: byte tokens shown as <0x..>; 3: ridge toward the identity
MAX_FIT_CHUNKS = lens_fitting.MAX_FIT_CHUNKS
BATCH = lens_fitting.LINEAR_BATCH  # fitting chunks per forward pass
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


_all_slots = lens_fitting._all_slots  # (kept importable from here)


def fit_config(request: LinearShortcutRequest) -> FitConfig:
    """The stored lens a request uses: its corpus settings only (prompt and held-out size aside)."""
    return FitConfig("linear_shortcut", request.corpus, request.chunk_tokens, request.fit_chunks)


def fit(model, request: LinearShortcutRequest, progress=lambda f, m: None):
    """The fitted ``AffineLens`` of ``model`` on the request's corpus chunks, fitted now (not stored)."""
    return lens_fitting.fit(model, fit_config(request), progress).lens


def check(request: LinearShortcutRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: LinearShortcutRequest, progress) -> LensComparisonResult:
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    target_id = prompts.single_token_id(model, request.target) if request.target else None

    def fit_progress(fraction, message):
        progress(None if fraction is None else FIT_SHARE * fraction, message)

    lens = ctx.fitted_lens(fit_config(request), fit_progress).lens
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
