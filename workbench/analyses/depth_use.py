"""Depth use: how much each layer writes into the residual stream, and what skipping it changes.

Csordás, Manning & Potts (2025), "Do Language Models Use Their Depth Efficiently?".

Per block ``l`` (positions averaged, the first token excluded by default because it
is an attention sink with atypical norms):

* relative norm of the attention contribution ``||a_l|| / ||h_l||`` and of the MLP
  contribution ``||m_l|| / ||h_l + a_l||``, where contributions are differences of
  residual states (so Gemma's and OLMo 2's post-sublayer norms are included, see
  tracing.sublayer_stream);
* cosine of each contribution with the residual it is added to (negative: it erases);

Parallel blocks (GPT-NeoX / Pythia, Phi, GPT-J: ``out = h + attn(h) + mlp(h)``) have no residual
between the sublayers: both contributions are exact (the attention module's output and the
rest of the block's write), and BOTH are measured against the block input ``h_l`` they read,
``||m_l|| / ||h_l||`` and ``cos(m_l, h_l)``, not against ``h_l + a_l``, which the model never forms.
* skipping block ``l`` (its output := its input): KL(p_orig || p_skip) of the output
  distribution at the last position and averaged over positions, and the relative change
  ``||h'_m - h_m|| / ||h_m||`` of every later block output ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import prompts, tracing
from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary
from workbench.lenses import kl_divergence
from workbench.tracing import SublayerTrace

NAME = "depth_use"
VERSION = 2  # 2: byte tokens shown as <0x..>


@dataclass(frozen=True)
class DepthUseRequest:
    prompt: str
    include_first_token: bool = False


@dataclass(frozen=True, eq=False)
class DepthUseResult:
    model_name: str
    tokens: np.ndarray  # (seq,) str
    attn_rel_norm: np.ndarray  # (block,) float32
    mlp_rel_norm: np.ndarray  # (block,)
    attn_cos: np.ndarray  # (block,)
    mlp_cos: np.ndarray  # (block,)
    skip_kl_last: np.ndarray  # (block,) nats, at the last position
    skip_kl_mean: np.ndarray  # (block,) nats, averaged over positions
    skip_resid_change: np.ndarray  # (skipped layer, later layer) relative change; 0 where later <= skipped
    include_first_token: bool

    def __post_init__(self):
        n = len(self.attn_rel_norm)
        for name in ("mlp_rel_norm", "attn_cos", "mlp_cos", "skip_kl_last", "skip_kl_mean"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"DepthUseResult.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.skip_resid_change.shape != (n, n):
            raise ValueError(f"skip_resid_change has shape {self.skip_resid_change.shape}, expected ({n}, {n})")

    @property
    def n_layers(self) -> int:
        return len(self.attn_rel_norm)



def _positions(seq: int, include_first_token: bool) -> slice:
    return slice(0 if include_first_token or seq == 1 else 1, seq)


def _mean_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> np.ndarray:
    """Mean over positions of ||numerator|| / ||denominator|| for (block, seq, d_model) tensors."""
    return (numerator.norm(dim=-1) / denominator.norm(dim=-1).clamp_min(1e-12)).mean(-1).numpy()


def _mean_cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(-1).numpy()


def kl_from_logits(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) || softmax(other)) over the last axis, in float64."""
    logp = torch.log_softmax(reference.double(), -1)
    logq = torch.log_softmax(other.double(), -1)
    return kl_divergence(logp, logq)


def compute(
    model_name: str,
    tokens: tuple[str, ...],
    clean: SublayerTrace,
    skipped_resid: torch.Tensor,
    skipped_logits: torch.Tensor,
    request: DepthUseRequest,
) -> DepthUseResult:
    """``skipped_resid`` (block, slot, seq, d_model) and ``skipped_logits`` (block, seq, vocab):
    row ``l`` skips block ``l`` (tracing.skip_layers with ``skipped = range(n_layers)``)."""
    pos = _positions(len(tokens), request.include_first_token)
    h_in, h_mid, h_out = (t[:, pos] for t in (clean.resid_in, clean.resid_mid, clean.resid_out))
    attn, mlp = h_mid - h_in, h_out - h_mid
    mlp_reads = h_in if clean.parallel else h_mid  # what the MLP's contribution is added to / compared with
    n_layers = h_in.shape[0]
    kl = kl_from_logits(clean.logits.unsqueeze(0), skipped_logits)  # (block, seq)
    change = np.zeros((n_layers, n_layers), np.float32)
    for skipped in range(n_layers):
        later = skipped_resid[skipped, skipped + 2 :, pos]  # block outputs after the skipped one
        reference = clean.resid_out[skipped + 1 :, pos]
        ratio = (later - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-12)
        change[skipped, skipped + 1 :] = ratio.mean(-1).numpy()
    return DepthUseResult(
        model_name=model_name,
        tokens=np.array(tokens),
        attn_rel_norm=_mean_ratio(attn, h_in).astype(np.float32),
        mlp_rel_norm=_mean_ratio(mlp, mlp_reads).astype(np.float32),
        attn_cos=_mean_cos(attn, h_in).astype(np.float32),
        mlp_cos=_mean_cos(mlp, mlp_reads).astype(np.float32),
        skip_kl_last=kl[:, -1].float().numpy(),
        skip_kl_mean=kl[:, pos].mean(-1).float().numpy(),
        skip_resid_change=change,
        include_first_token=request.include_first_token,
    )


def check(request: DepthUseRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: DepthUseRequest, progress) -> DepthUseResult:
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    progress(0.2, "Recording attention and MLP contributions")
    clean = tracing.sublayer_stream(model, encoded.ids)
    progress(0.5, f"Skipping each of the {model.info.n_layers} blocks (one batched run)")
    resid, logits = tracing.skip_layers(model, encoded.ids, list(range(model.info.n_layers)))
    return compute(ctx.name, encoded.tokens, clean, resid, logits, request)


def summary(result: DepthUseResult) -> list[LayerSummary]:
    """Output change (KL at the last position) when each block is skipped."""
    return [LayerSummary.per_block(result.model_name, NAME, "depth use: KL when the block is skipped (nats)",
                                   result.skip_kl_last)]


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Depth use", Request=DepthUseRequest, Result=DepthUseResult,
    run=run, check=check, summary=summary,
    compare_request=lambda inputs: DepthUseRequest(inputs.prompt), compare_figure="skip_effects",
    compare_note="skips every block: slower",
)
