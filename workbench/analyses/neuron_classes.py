"""Neuron classes from weights: enrichment, depletion and their variants.

Gerstner & Schütze (2025), "Understanding Gated Neurons in Transformers from Their
Input-Output Functionality". Definitions as in METHODS.md (Neurons).

Per MLP neuron, from its weight rows (all (neurons, d_model), see
``parts.mlp_weights``): ``cos(w_in, w_out)`` and, for gated MLPs, ``cos(w_gate, w_out)``
and ``cos(w_gate, w_in)``. Gated neurons are first sign-normalised: where
``cos(w_gate, w_in) < 0`` both ``w_in`` and ``w_out`` are negated, which leaves
``act(w_gate·x) * (w_in·x) * w_out`` unchanged for any activation (the two sign flips
cancel), and makes ``cos(w_gate, w_in) >= 0``. With ``approx(x) = +1 if x > 0.5, -1 if
x < -0.5, else 0`` a neuron's class comes from
``(approx cos(in,out), |approx cos(gate,out)|, typical)`` where typical means
``approx(gate,in) == approx(gate,out) * approx(in,out)``:

    (1, 1, 1) enrichment            (1, 0, 1) conditional enrichment
    (-1, 1, 1) depletion            (-1, 0, 1) conditional depletion
    (0, 1, 1) proportional change   (0, 0, .) orthogonal output
    typical == 0: the atypical variant of the first five.

Non-gated MLPs (GPT-2): enrichment / depletion / orthogonal output by
``approx(cos(in, out))``.

The null model: the cosine of two independent random directions in ``d`` dimensions is
``2B - 1`` with ``B ~ Beta((d-1)/2, (d-1)/2)``; the result carries its central band.

Optionally the preceding norm's weights are folded in first (``fold_norm``): the scale of
the norm the MLP reads (``1 + weight`` for Gemma) multiplies the columns of ``w_gate`` and
``w_in``. Folding changes the cosines, so it is an explicit request option. Gemma's norm
after the MLP is not folded into ``w_out`` (its large scales swamp every cosine: with it
every Gemma-3-270m neuron came out "orthogonal output"). A model with no norm before its MLP
(OLMo 2) refuses ``fold_norm`` (BadRequest): there is nothing to fold. Phi-3's fused
``gate_up_proj`` is split into gate and up rows by ``parts.mlp_weights``; non-gated MLPs
(GPT-2, GPT-NeoX / Pythia, Phi, GPT-J) get the three non-gated classes.

Everything is vectorised per layer (float32 unit rows, one einsum per cosine, in numpy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from workbench.analyses.base import Analysis
from workbench.axes import LayerSummary, check_shapes
from workbench.errors import BadRequest
from workbench.models import parts
from workbench.models.loader import LoadedModel

NAME = "neuron_classes"
VERSION = 2

CLASS_NAMES = (
    "enrichment",
    "conditional enrichment",
    "depletion",
    "conditional depletion",
    "proportional change",
    "orthogonal output",
    "atypical enrichment",
    "atypical conditional enrichment",
    "atypical depletion",
    "atypical conditional depletion",
    "atypical proportional change",
)
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
ATYPICAL_OFFSET = CLASS_ID["atypical enrichment"]  # typical class id + offset = its atypical variant
THRESHOLD = 0.5


@dataclass(frozen=True)
class NeuronClassRequest:
    fold_norm: bool = False  # fold the preceding norm's scale into w_gate and w_in
    null_coverage: float = 0.99  # central probability mass of the reported null band

    def __post_init__(self):
        if not isinstance(self.fold_norm, bool):
            raise BadRequest("fold_norm must be true or false.")
        if not 0.5 <= self.null_coverage < 1.0:
            raise BadRequest(f"null_coverage must be in [0.5, 1), got {self.null_coverage}.")


@dataclass(frozen=True, eq=False)
class NeuronClassResult:
    model_name: str
    gated: bool
    d_model: int
    fold_norm: bool
    cos_in_out: np.ndarray  # (block, neuron) float32
    cos_gate_out: np.ndarray  # (block, neuron) float32 after sign normalisation; (0, 0) if not gated
    cos_gate_in: np.ndarray  # (block, neuron) float32, >= 0 after normalisation; (0, 0) if not gated
    flipped: np.ndarray  # (block, neuron) bool: w_in and w_out were negated; (0, 0) if not gated
    class_ids: np.ndarray  # (block, neuron) int8 indices into class_names
    class_names: np.ndarray  # (classes,) str
    fractions: np.ndarray  # (block, class) float64: share of each class per layer, rows sum to 1
    null_band: np.ndarray  # (2,) float64: central null_coverage band of a random cosine in d_model dims
    null_coverage: float
    outside_null: np.ndarray  # (block,) float64: share of neurons with cos(in, out) outside the band

    def __post_init__(self):
        n_layer, n_neurons = self.cos_in_out.shape
        gate_shape = (n_layer, n_neurons) if self.gated else (0, 0)
        check_shapes(self, {"cos_gate_out": gate_shape, "cos_gate_in": gate_shape, "flipped": gate_shape,
                            "class_ids": (n_layer, n_neurons), "class_names": (len(CLASS_NAMES),),
                            "fractions": (n_layer, len(CLASS_NAMES)), "null_band": (2,), "outside_null": (n_layer,)})

    @property
    def n_layers(self) -> int:
        return self.cos_in_out.shape[0]

    @property
    def n_neurons(self) -> int:
        return self.cos_in_out.shape[1]



# ---------------------------------------------------------------------- pure maths


def approx(cos: torch.Tensor) -> torch.Tensor:
    """+1 where cos > 0.5, -1 where cos < -0.5, else 0 (int8)."""
    return (cos > THRESHOLD).to(torch.int8) - (cos < -THRESHOLD).to(torch.int8)


def row_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between matching rows of two (neurons, d) matrices, in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def sign_normalise(
    w_gate: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negate ``w_in`` and ``w_out`` rows where cos(w_gate, w_in) < 0; returns (w_in, w_out, flipped).

    ``act(g·x) * (u·x) * w_out`` is unchanged: (-u·x) * (-w_out) = (u·x) * w_out.
    """
    flipped = row_cosines(w_gate, w_in) < 0
    sign = torch.where(flipped, -1.0, 1.0).to(w_in.dtype)[:, None]
    return w_in * sign, w_out * sign, flipped


def classify_gated(cos_in_out: torch.Tensor, cos_gate_out: torch.Tensor, cos_gate_in: torch.Tensor) -> torch.Tensor:
    """Class ids (int8) of sign-normalised gated neurons from their three cosines."""
    io, go, gi = approx(cos_in_out), approx(cos_gate_out), approx(cos_gate_in)
    typical = gi == go * io
    strong_gate = go != 0
    base = torch.full_like(io, CLASS_ID["orthogonal output"])
    base[(io == 1) & strong_gate] = CLASS_ID["enrichment"]
    base[(io == 1) & ~strong_gate] = CLASS_ID["conditional enrichment"]
    base[(io == -1) & strong_gate] = CLASS_ID["depletion"]
    base[(io == -1) & ~strong_gate] = CLASS_ID["conditional depletion"]
    base[(io == 0) & strong_gate] = CLASS_ID["proportional change"]
    orthogonal = (io == 0) & ~strong_gate
    atypical = ~typical & ~orthogonal
    base[atypical] += ATYPICAL_OFFSET
    return base


def classify_plain(cos_in_out: torch.Tensor) -> torch.Tensor:
    """Class ids (int8) of non-gated neurons: enrichment / depletion / orthogonal output."""
    io = approx(cos_in_out)
    base = torch.full_like(io, CLASS_ID["orthogonal output"])
    base[io == 1] = CLASS_ID["enrichment"]
    base[io == -1] = CLASS_ID["depletion"]
    return base


def class_fractions(class_ids: np.ndarray) -> np.ndarray:
    """(block, class) share of each class in each layer."""
    n_layer, n_neurons = class_ids.shape
    counts = np.zeros((n_layer, len(CLASS_NAMES)))
    for layer in range(n_layer):
        counts[layer] = np.bincount(class_ids[layer].astype(np.int64), minlength=len(CLASS_NAMES))
    return counts / max(n_neurons, 1)


def null_band(d_model: int, coverage: float) -> np.ndarray:
    """Central ``coverage`` band of the cosine of two random directions in ``d_model`` dims."""
    a = (d_model - 1) / 2
    tail = (1 - coverage) / 2
    lo, hi = stats.beta.ppf([tail, 1 - tail], a, a)
    return np.array([2 * lo - 1, 2 * hi - 1])


def null_cdf(d_model: int, cos: np.ndarray) -> np.ndarray:
    """CDF of the random-direction cosine in ``d_model`` dims (for tests and QQ plots)."""
    a = (d_model - 1) / 2
    return stats.beta.cdf((np.asarray(cos) + 1) / 2, a, a)


# ---------------------------------------------------------------------- weights of a model


def layer_weights(model: LoadedModel, layer: int, fold_norm: bool) -> parts.MlpWeights:
    """Block ``layer``'s MLP rows in float32 on the CPU, norm scales folded in if asked.

    Without folding these may be views of the model's weights: read them, never write them.
    """
    if fold_norm and model.spec.pre_mlp_norm is None:
        raise BadRequest(
            f"There is no norm to fold: {model.name} ({model.spec.family}) normalises its sublayers' outputs, "
            "and its MLP reads the residual stream directly. Run without 'fold the preceding norm'."
        )
    raw = parts.mlp_weights(model.spec, model.hf_model, layer)
    w_gate = raw.w_gate.float().cpu() if raw.w_gate is not None else None
    w_in, w_out = raw.w_in.float().cpu(), raw.w_out.float().cpu()
    if fold_norm:
        pre, _post = parts.mlp_norm_scales(model.spec, model.hf_model, layer)
        if pre is not None:  # (numpy: the elementwise product is much faster than torch's on a busy CPU)
            scale = pre.cpu().numpy()[None, :]
            w_in = torch.from_numpy(w_in.detach().numpy() * scale)
            w_gate = torch.from_numpy(w_gate.detach().numpy() * scale) if w_gate is not None else None
    return parts.MlpWeights(w_gate=w_gate, w_in=w_in, w_out=w_out)


@dataclass(frozen=True)
class LayerCosines:
    cos_in_out: torch.Tensor  # (neurons,)
    cos_gate_out: torch.Tensor | None
    cos_gate_in: torch.Tensor | None
    flipped: torch.Tensor | None  # bool
    class_ids: torch.Tensor  # int8


def layer_cosines(weights: parts.MlpWeights) -> LayerCosines:
    """Cosines and classes of one layer's neurons (sign-normalised when gated)."""
    if weights.w_gate is None:
        cos_io = row_cosines(weights.w_in, weights.w_out)
        return LayerCosines(cos_io, None, None, None, classify_plain(cos_io))
    # the same numbers as sign_normalise + row_cosines, with each matrix normalised once:
    # negating w_in and w_out leaves cos(in, out) alone and negates the two gate cosines
    # (numpy: single-threaded and 10x faster than torch's small-op path on a busy 2-core machine)
    gate, w_in, w_out = (_unit_rows(w) for w in (weights.w_gate, weights.w_in, weights.w_out))
    cos_gi = np.einsum("nd,nd->n", gate, w_in)
    flipped = cos_gi < 0
    sign = np.where(flipped, -1.0, 1.0).astype(np.float32)
    cos_io = torch.from_numpy(np.einsum("nd,nd->n", w_in, w_out))
    cos_go = torch.from_numpy(np.einsum("nd,nd->n", gate, w_out) * sign)
    cos_gi = torch.from_numpy(cos_gi * sign)
    flipped = torch.from_numpy(flipped)
    return LayerCosines(cos_io, cos_go, cos_gi, flipped, classify_gated(cos_io, cos_go, cos_gi))


def _unit_rows(w: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit length, float32 (cosine errors ~1e-7, far below the 0.5 thresholds)."""
    w = w.detach().float().cpu().numpy()
    return w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-30)


def compute(
    model: LoadedModel,
    request: NeuronClassRequest,
    progress: Callable[[float | None, str], None] = lambda f, m: None,
) -> NeuronClassResult:
    """Cosines, classes and per-layer class fractions for every MLP neuron of ``model``."""
    n_layers, gated = model.info.n_layers, model.spec.gated
    per_layer = []
    with torch.no_grad():
        for layer in range(n_layers):
            per_layer.append(layer_cosines(layer_weights(model, layer, request.fold_norm)))
            progress((layer + 1) / n_layers, f"Classified the neurons of {layer + 1} of {n_layers} layers")

    def stack(name: str, dtype) -> np.ndarray:
        if not gated and name != "cos_in_out":
            return np.zeros((0, 0), dtype)
        return np.stack([getattr(c, name).numpy() for c in per_layer]).astype(dtype)

    cos_io = stack("cos_in_out", np.float32)
    class_ids = np.stack([c.class_ids.numpy() for c in per_layer]).astype(np.int8)
    band = null_band(model.info.d_model, request.null_coverage)
    return NeuronClassResult(
        model_name=model.name,
        gated=gated,
        d_model=model.info.d_model,
        fold_norm=request.fold_norm,
        cos_in_out=cos_io,
        cos_gate_out=stack("cos_gate_out", np.float32),
        cos_gate_in=stack("cos_gate_in", np.float32),
        flipped=stack("flipped", bool),
        class_ids=class_ids,
        class_names=np.array(CLASS_NAMES),
        fractions=class_fractions(class_ids),
        null_band=band,
        null_coverage=float(request.null_coverage),
        outside_null=((cos_io < band[0]) | (cos_io > band[1])).mean(axis=1).astype(np.float64),
    )


# ---------------------------------------------------------------------- queries on a result


def neurons_of_class(result: NeuronClassResult, class_name: str, layer: int | None = None, limit: int = 50):
    """(block, neuron, cos_in_out) rows of neurons in ``class_name``, strongest |cos(in,out)| first."""
    if class_name not in CLASS_ID:
        raise BadRequest(f"Unknown neuron class {class_name!r}. Classes: {', '.join(CLASS_NAMES)}.")
    mask = result.class_ids == CLASS_ID[class_name]
    if layer is not None:
        keep = np.zeros_like(mask)
        keep[layer] = True
        mask &= keep
    layers, neurons = np.nonzero(mask)
    cos = result.cos_in_out[layers, neurons]
    order = np.argsort(-np.abs(cos), kind="stable")[:limit]
    return [(int(layers[i]), int(neurons[i]), float(cos[i])) for i in order]


ENRICHMENT_FAMILY = ("enrichment", "conditional enrichment", "atypical enrichment", "atypical conditional enrichment")
DEPLETION_FAMILY = ("depletion", "conditional depletion", "atypical depletion", "atypical conditional depletion")


def summary(result: NeuronClassResult) -> list[LayerSummary]:
    """Share of each block's neurons in the enrichment and the depletion families."""
    names = [str(n) for n in result.class_names]

    def share(family: tuple[str, ...]) -> np.ndarray:
        return result.fractions[:, [names.index(c) for c in family if c in names]].sum(axis=1)

    return [
        LayerSummary.per_block(result.model_name, NAME, "neurons: enrichment share", share(ENRICHMENT_FAMILY)),
        LayerSummary.per_block(result.model_name, NAME, "neurons: depletion share", share(DEPLETION_FAMILY)),
    ]


def run(ctx, request: NeuronClassRequest, progress) -> NeuronClassResult:
    """Cosines and classes of every MLP neuron, from the weights (Gerstner & Schuetze)."""
    return compute(ctx.model, request, progress)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Neuron classes", Request=NeuronClassRequest, Result=NeuronClassResult,
    run=run, summary=summary,
    compare_request=lambda inputs: NeuronClassRequest(), compare_figure="class_fractions",
    compare_note="from the weights",
)
