"""Lens comparison: every lens of a model side by side, on the same states, with the same measures.

Rows are lenses, columns are residual slots (``workbench.axes``); every lens decodes slot ``l`` of
the same residual stream through the model's own ``Unembed`` after its own transform:

* ``logit``: the identity (nostalgebraist 2020, "interpreting GPT: the logit lens");
* ``linear_shortcut``: the least-squares affine map h_l -> h_L (Din et al. 2023, "Jump to
  Conclusions"), fitted in closed form and stored (``workbench.lens_fitting``);
* ``jacobian``: the corpus-averaged Jacobian of h_L with respect to h_l (anthropics/jacobian-lens),
  stored the same way;
* ``tuned``: the tuned lens as trained so far (Belrose et al. 2023), when one has been trained;
* ``patchscope``: h_l transplanted into an identity prompt at the same slot and decoded there
  (Ghandeharioun et al. 2024, "Patchscopes"; ``analyses.patchscope.next_token_logits``).

On the prompt: each lens's top-k next tokens at the last position, per slot. On held-out text (the
bundled corpus's held-out split, the same chunks for every lens): per slot, mean KL(final || lens),
top-1 agreement with the final prediction and the perplexity of the true next token, as in
``analyses.tuned_lens``. The Patchscope has no held-out row: it needs one forward pass of the identity
prompt per slot and per token (its cells are NaN and the figure says so). Each lens's fitting cost
(seconds and tokens; 0 for the logit lens and the Patchscope, which fit nothing) comes with it.

Every lens reproduces the model's own distribution at the last slot (the last slot is never
transformed; the Patchscope decodes the final state as the model does): tested, with the
identity-map and the Patchscope invariants, on every tiny architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import lens_fitting, prompts, tracing
from workbench.analyses.base import Analysis
from workbench.analyses.tuned_lens import TunedLensConfig, corpus_chunks, held_out_statistics
from workbench.axes import LayerSummary, check_shapes, slot_depth, slot_labels
from workbench.corpus import CORPORA
from workbench.errors import BadRequest
from workbench.lenses import LogitLens, lens_logits

NAME = "lens_comparison"
VERSION = 1
LENSES = ("logit", "linear_shortcut", "jacobian", "tuned", "patchscope")
LENS_TITLES = {"logit": "logit lens", "linear_shortcut": "linear shortcut", "jacobian": "Jacobian lens",
               "tuned": "tuned lens", "patchscope": "Patchscope"}
FITTED = ("linear_shortcut", "jacobian")  # closed-form / averaged lenses held by lens_fitting
COMPARE_LENSES = ("logit", "linear_shortcut")  # what the compare page overlays on normalised depth
IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"


@dataclass(frozen=True)
class LensComparisonRequest:
    prompt: str
    # the Jacobian lens is left out by default: its first fit takes minutes on a CPU (fit it in the background)
    lenses: tuple[str, ...] = ("logit", "linear_shortcut", "patchscope")
    k: int = 5  # top-k shown on hover
    corpus: str = "python-reference"
    chunk_tokens: int = 64
    eval_chunks: int = 2
    tuned_step: int = 0  # the tuned lens's training step compared (filled in by the service); 0: none
    identity_prompt: str = IDENTITY_PROMPT  # the Patchscope's target prompt; its last token is the placeholder

    def __post_init__(self):
        unknown = [name for name in self.lenses if name not in LENSES]
        if unknown:
            raise BadRequest(f"Unknown lens {unknown[0]!r}. Lenses: {', '.join(LENSES)}.")
        if not self.lenses or len(set(self.lenses)) != len(self.lenses):
            raise BadRequest("Choose one or more lenses, each once.")
        if not 1 <= self.k <= 20:
            raise BadRequest("k must be between 1 and 20.")
        if self.corpus not in CORPORA:
            raise BadRequest(f"Unknown corpus {self.corpus!r}. Corpora: {', '.join(CORPORA)}.")
        if not 8 <= self.chunk_tokens <= 512:
            raise BadRequest("chunk_tokens must be between 8 and 512.")
        if not 0 <= self.eval_chunks <= 64:
            raise BadRequest("eval_chunks must be between 0 and 64.")
        if self.tuned_step < 0 or (self.tuned_step > 0 and "tuned" not in self.lenses):
            raise BadRequest("tuned_step is the tuned lens's training step, for a request that compares it.")


@dataclass(frozen=True, eq=False)
class LensComparisonResult:
    model_name: str
    lens_names: np.ndarray  # (lens,) str: keys of LENSES
    layer_labels: np.ndarray  # (slot,) str
    tokens: np.ndarray  # (seq,) prompt tokens
    top_tokens: np.ndarray  # (lens, slot, k) str: top-k next tokens at the prompt's last position
    top_probs: np.ndarray  # (lens, slot, k) float32
    eval_tokens: int  # held-out tokens seen (0 in a partial result before the first chunk)
    kl: np.ndarray  # (lens, slot) mean KL(final || lens) on held-out tokens, nats; NaN: not measured
    top1: np.ndarray  # (lens, slot) share of held-out tokens where the lens's top-1 is the final top-1
    ppl: np.ndarray  # (lens, slot) perplexity of the true next token under the lens
    fit_seconds: np.ndarray  # (lens,) wall seconds the lens took to fit (0: nothing to fit)
    fit_tokens: np.ndarray  # (lens,) int64 tokens it was fitted on (tuned: steps x chunk tokens)
    fit_note: np.ndarray  # (lens,) str: how it was made, e.g. "closed form, 1512 tokens"

    def __post_init__(self):
        n_lens, n_slots = len(self.lens_names), len(self.layer_labels)
        k = self.top_tokens.shape[-1] if self.top_tokens.ndim == 3 else 0
        check_shapes(self, {"top_tokens": (n_lens, n_slots, k), "top_probs": (n_lens, n_slots, k),
                            "kl": (n_lens, n_slots), "top1": (n_lens, n_slots), "ppl": (n_lens, n_slots),
                            "fit_seconds": (n_lens,), "fit_tokens": (n_lens,), "fit_note": (n_lens,)})

    def titles(self) -> list[str]:
        return [LENS_TITLES[str(name)] for name in self.lens_names]


@dataclass
class _Lens:
    """One row: a transform of slots < L (None: the Patchscope, decoded on its own), and its cost."""

    name: str
    transform: object | None
    seconds: float = 0.0
    tokens: int = 0
    note: str = ""


def fit_config(name: str, request: LensComparisonRequest) -> lens_fitting.FitConfig:
    """The stored fitted lens a request compares: the kind's default fitting size on the request's corpus."""
    return lens_fitting.FitConfig(name, request.corpus, request.chunk_tokens,
                                  lens_fitting.default_config(name).fit_chunks)


def _prepare(ctx, request: LensComparisonRequest, progress) -> list[_Lens]:
    """Every requested lens, fitted lenses loaded from the store (or fitted now, with progress)."""
    model, rows = ctx.model, []
    fitted = [name for name in request.lenses if name in FITTED]
    for name in request.lenses:
        if name == "logit":
            rows.append(_Lens(name, LogitLens(), note="nothing to fit"))
        elif name in FITTED:
            config = fit_config(name, request)
            share = 0.6 / max(1, len(fitted))
            start = 0.6 * fitted.index(name) / max(1, len(fitted))
            found = ctx.fitted_lens(config, lambda f, m, s=start, w=share, t=LENS_TITLES[name]: progress(
                None if f is None else s + w * f, f"{t}: {m}"))
            how = "closed form" if name == "linear_shortcut" else "averaged Jacobians"
            rows.append(_Lens(name, found.lens, found.seconds, found.tokens,
                              f"{how}, {found.tokens:d} tokens, {found.seconds:.1f} s"))
        elif name == "tuned":
            config = TunedLensConfig(request.corpus, request.chunk_tokens)
            lens, step = ctx.trainer(config, progress).snapshot()
            if step == 0:
                raise BadRequest("The tuned lens has not been trained for this model yet: train it on the Tuned lens "
                                 "page first, or leave it out.")
            if step != request.tuned_step:
                raise BadRequest(f"The tuned lens is at step {step} now, not {request.tuned_step}: compare again.")
            rows.append(_Lens(name, lens, float("nan"), step * request.chunk_tokens,
                              f"trained {step:d} steps (Adam)"))
        else:
            rows.append(_Lens(name, None, note="nothing to fit; one forward pass per slot"))
    del model
    return rows


def _patchscope_logits(model, prompt_ids: torch.Tensor, request: LensComparisonRequest, settings) -> torch.Tensor:
    from workbench.analyses import patchscope  # the Patchscope's mechanics live with its own analysis

    target = prompts.encode(model, request.identity_prompt, settings)
    n_slots = model.info.n_layers + 1
    return patchscope.next_token_logits(model, prompt_ids, len(prompt_ids) - 1, target.ids, len(target.ids) - 1,
                                        list(range(n_slots)))


def check(request: LensComparisonRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)
    if "patchscope" in request.lenses:
        prompts.check_text(request.identity_prompt, settings)


def run(ctx, request: LensComparisonRequest, progress) -> LensComparisonResult:
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    rows = _prepare(ctx, request, progress)
    progress(0.6, "Decoding the prompt under every lens")
    with torch.no_grad():
        resid = tracing.residual_stream(model, encoded.ids).resid[:, -1:]  # (slot, 1, d_model)
        probs = []
        for row in rows:
            if row.transform is None:
                logits = _patchscope_logits(model, encoded.ids, request, ctx.settings)
            else:
                logits = lens_logits(model, row.transform, resid)[:, 0]
            probs.append(torch.softmax(logits.double(), -1))
    top = [p.topk(request.k, dim=-1) for p in probs]
    n_lens, n_slots = len(rows), resid.shape[0]
    top_tokens = np.array([[prompts.token_strings(model, t.indices[s]) for s in range(n_slots)] for t in top])
    top_probs = np.stack([t.values.float().numpy() for t in top])
    nan = np.full((n_lens, n_slots), np.nan, dtype=np.float32)

    def result(totals: list, n_tokens: int, n_next: int) -> LensComparisonResult:
        kl, top1, ppl = nan.copy(), nan.copy(), nan.copy()
        for i, t in enumerate(totals):
            if t is not None and n_tokens:
                kl[i] = (t.kl / n_tokens).float().numpy()
                top1[i] = (t.top1 / n_tokens).float().numpy()
                ppl[i] = torch.exp(t.nll / max(1, n_next)).float().numpy()
        return LensComparisonResult(
            model_name=model.name, lens_names=np.array([r.name for r in rows]), layer_labels=slot_labels(n_slots - 1),
            tokens=np.array(encoded.tokens), top_tokens=top_tokens, top_probs=top_probs, eval_tokens=n_tokens,
            kl=kl, top1=top1, ppl=ppl, fit_seconds=np.array([r.seconds for r in rows], dtype=np.float64),
            fit_tokens=np.array([r.tokens for r in rows], dtype=np.int64), fit_note=np.array([r.note for r in rows]))

    totals: list = [None] * n_lens
    ctx.partial(result(totals, 0, 0))
    held_out = corpus_chunks(model, request.corpus, "heldout", request.chunk_tokens, request.eval_chunks)
    n_tokens = n_next = 0
    with torch.no_grad():
        for c, ids in enumerate(held_out):
            progress(0.65 + 0.35 * c / len(held_out), f"Held-out chunk {c + 1} of {len(held_out)}")
            chunk_resid = tracing.residual_stream(model, ids).resid
            for i, row in enumerate(rows):
                if row.transform is not None:
                    totals[i] = held_out_statistics(lens_logits(model, row.transform, chunk_resid), ids[1:], totals[i])
            n_tokens, n_next = n_tokens + len(ids), n_next + len(ids) - 1
            if c + 1 < len(held_out):
                ctx.partial(result(totals, n_tokens, n_next))
    return result(totals, n_tokens, n_next)


def summary(result: LensComparisonResult) -> list[LayerSummary]:
    """Per lens: held-out KL and top-1 agreement on normalised depth (lenses measured on held-out text)."""
    n_blocks = len(result.layer_labels) - 1
    depth, labels = slot_depth(n_blocks), tuple(str(x) for x in result.layer_labels)
    out = []
    for i, title in enumerate(result.titles()):
        if np.isnan(result.kl[i]).all():
            continue
        out.append(LayerSummary(result.model_name, NAME, f"Held-out KL(final ‖ {title}) (nats)", depth,
                                result.kl[i].astype(np.float64), labels))
        out.append(LayerSummary(result.model_name, NAME, f"Held-out top-1 agreement, {title}", depth,
                                result.top1[i].astype(np.float64), labels))
    return out


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Lens comparison", Request=LensComparisonRequest, Result=LensComparisonResult,
    run=run, check=check, summary=summary,
    compare_request=lambda inputs: LensComparisonRequest(inputs.prompt, lenses=COMPARE_LENSES),
    compare_figure="grid", compare_note="fits the linear shortcut on first use",
)
