"""Future lens, linear variants: how well one hidden state anticipates the tokens after the next.

Pal, Sun, Yuan, Wallace & Bau (2023), "Future Lens: Anticipating Subsequent Tokens from a Single
Hidden State". From the state ``h_l(t)`` of residual slot ``l`` at position ``t`` alone, predict the
token at ``t + N`` for the horizons ``N`` in ``HORIZONS`` (N = 1 is the next token, the model's own
job, kept for reference; N = 2 and 3 are the tokens after it). Two linear predictors per slot and
horizon, both fitted on the bundled corpus's "train" split and scored on its "heldout" split:

(a) **via the final state** (``METHODS[1]``): the affine map ``h_l(t) -> h_L(t + N - 1)`` (the last
    slot at the position whose decode predicts token ``t + N``) that minimises the squared error, in
    closed form (``fit_affine``: normal equations in float64, Cholesky solve), with a relative ridge
    that shrinks the map toward the identity, i.e. toward the logit lens (as
    ``lenses.fit_linear_shortcut`` does; for N = 1 this IS the linear shortcut of Din et al. 2023),
    then decoded by the model's own final norm, unembedding and soft-cap (``lenses.decode``). This is
    the paper's linear model approximation.
(b) **direct readout** (``METHODS[2]``): a readout trained on the vocabulary objective itself,
    cross-entropy of the true token ``t + N``, by ``epochs`` epochs of Adam with decoupled weight
    decay (AdamW). What was chosen to keep it bounded on a CPU: the readout is FACTORED through
    ``d_model`` and the model's frozen ``Unembed``: ``softcap(W_U norm_f(M h + c))``, with a trainable
    affine ``M, c`` (d_model x (d_model + 1) numbers per slot and horizon, not d_model x vocab),
    initialised at (a)'s map and trained as ``M = M_a + Delta``, ``c = c_a + delta``, so the weight
    decay pulls the readout back toward (a) rather than toward zero. The training softmax runs over a
    candidate vocabulary (``candidate_ids``: every target token of the fitting text plus the model's
    own top-``CANDIDATE_TOP_K`` predictions at every fitting position), not the whole vocabulary:
    a few thousand rows of ``W_U`` instead of 49k (SmolLM2) or 262k (Gemma) per step. Held-out
    scores always use the full vocabulary. ``epochs = 0`` leaves (b) equal to (a).

Baselines (``METHODS[0]``, per slot): the logit lens's own prediction at ``h_l(t)`` taken as the
guess for token ``t + N``. Per horizon: "copy the model's final prediction" (the model's next-token
top-1 at ``t`` taken as the guess for ``t + N``: the logit lens at the last slot) and the model's own
accuracy on token ``t + N`` with the full context up to ``t + N - 1`` (the ceiling that (a) imitates).

Reported per (method, horizon, slot) on held-out tokens: top-1 and top-5 accuracy of the true token
(a hit when fewer than k vocabulary entries score strictly higher), the mean negative log-likelihood
of the true token (nats) and top-1 agreement with the model's own prediction of token ``t + N`` (the
paper's measure). On a prompt: per slot, horizon and method, the top tokens predicted from the last
position. Every fitting and held-out chunk starts with the tokenizer's prefix; position 0 (the
attention sink) is never a source, and the last ``max(HORIZONS)`` positions of a chunk have no
target, so every horizon is scored on the same source positions. Slots are fitted, trained and
scored one at a time (only one slot's maps live at once); a partial result follows every slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workbench import prompts, tracing
from workbench.analyses.base import Analysis
from workbench.analyses.tuned_lens import corpus_chunks
from workbench.axes import LayerSummary, check_shapes, slot_labels
from workbench.corpus import CORPORA
from workbench.errors import BadRequest
from workbench.lenses import decode, model_unembed, soft_cap

NAME = "future_lens"
VERSION = 1
HORIZONS = (1, 2, 3)  # token t + N predicted from h_l(t)
METHODS = ("logit lens", "via final state (a)", "direct readout (b)")
MAX_FIT_TOKENS = 8192  # fitting chunks x chunk_tokens: the states of every slot are held at once
BATCH = 8  # chunks per forward pass
TRAIN_BATCH = 128  # source positions per Adam step
CANDIDATE_TOP_K = 16  # the model's own top predictions added to the training vocabulary at each position
DECODE_BUDGET = 64 << 20  # bytes of full-vocabulary logits decoded at once
STATS = ("top1", "top5", "nll", "agree")


@dataclass(frozen=True)
class FutureLensRequest:
    prompt: str
    corpus: str = "python-reference"
    chunk_tokens: int = 64
    fit_chunks: int = 24  # "train" split chunks the maps are fitted on
    eval_chunks: int = 2  # "heldout" split chunks they are scored on
    ridge: float = 1e-2  # (a): relative ridge toward the identity (the logit lens); 0: plain least squares
    epochs: int = 2  # (b): Adam epochs over the fitting positions; 0: (b) stays (a)
    lr: float = 1e-4  # (b): Adam learning rate
    weight_decay: float = 0.1  # (b): AdamW decay of the readout toward (a)
    top_k: int = 5  # tokens shown per slot for the prompt
    seed: int = 0  # (b): order of the training batches

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise BadRequest(f"Unknown corpus {self.corpus!r}. Corpora: {', '.join(CORPORA)}.")
        if not 8 <= self.chunk_tokens <= 512:
            raise BadRequest("chunk_tokens must be between 8 and 512.")
        if not 1 <= self.fit_chunks <= 512 or self.fit_chunks * self.chunk_tokens > MAX_FIT_TOKENS:
            raise BadRequest(f"fit_chunks must be at least 1, with fit_chunks x chunk_tokens at most {MAX_FIT_TOKENS}.")
        if not 1 <= self.eval_chunks <= 64:
            raise BadRequest("eval_chunks must be between 1 and 64.")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise BadRequest("ridge must be a finite number >= 0.")
        if not 0 <= self.epochs <= 20:
            raise BadRequest("epochs must be between 0 and 20.")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise BadRequest("lr must be in (0, 1].")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BadRequest("weight_decay must be a finite number >= 0.")
        if not 1 <= self.top_k <= 20:
            raise BadRequest("top_k must be between 1 and 20.")
        if not 0 <= self.seed <= 2**31 - 1:
            raise BadRequest("seed must be between 0 and 2147483647.")


@dataclass(frozen=True, eq=False)
class FutureLensResult:
    model_name: str
    layer_labels: np.ndarray  # (slot,) str
    horizons: np.ndarray  # (horizon,) int64: N, the token t + N predicted from h_l(t)
    methods: np.ndarray  # (method,) str: METHODS
    fit_tokens: int  # source positions the maps were fitted on
    eval_tokens: int  # held-out source positions scored (0 in a partial result before any slot)
    candidates: int  # size of (b)'s training vocabulary
    slots_done: int  # slots scored so far (all of them in a final result; the rest NaN)
    top1: np.ndarray  # (method, horizon, slot) fraction of held-out positions whose token t + N is top-1
    top5: np.ndarray  # (method, horizon, slot) ... is among the top 5
    nll: np.ndarray  # (method, horizon, slot) mean -log q(token t + N), nats
    agree: np.ndarray  # (method, horizon, slot) top-1 == the model's own top-1 for token t + N
    copy_top1: np.ndarray  # (horizon,) the model's next-token top-1 at t taken as the guess for t + N
    model_top1: np.ndarray  # (horizon,) the model's own top-1 accuracy on t + N (context up to t + N - 1)
    tokens: np.ndarray  # (seq,) str: prompt tokens
    pred_tokens: np.ndarray  # (method, horizon, slot, k) str: predictions from the prompt's last position
    pred_probs: np.ndarray  # (method, horizon, slot, k) float32

    def __post_init__(self):
        grid = (len(self.methods), len(self.horizons), len(self.layer_labels))
        k = self.pred_tokens.shape[-1] if self.pred_tokens.ndim == 4 else -1
        check_shapes(self, {**{name: grid for name in STATS}, "copy_top1": self.horizons.shape,
                            "model_top1": self.horizons.shape, "pred_tokens": (*grid, k), "pred_probs": (*grid, k)})


# ------------------------------------------------------------------------------ the math


def fit_affine(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """The affine map ``y ~ x @ A^T + b`` minimising ``sum |y - A x - b|^2 + lam |[A^T; b] - [I; 0]|^2``,
    from ``gram = X1^T X1`` ((d_in + 1)^2, X1 = [X, 1]) and ``cross = X1^T Y`` ((d_in + 1, d_out)), as
    ``[A^T; b]``, (d_in + 1, d_out) float64. ``lam = ridge * mean(diag(gram))``: a relative Tikhonov
    term shrinking ``A`` toward the identity (the logit lens; d_out must equal d_in) and ``b`` toward 0.
    ``ridge = inf`` gives the identity exactly; ``ridge = 0`` the least-squares solution."""
    gram, cross = gram.double(), cross.double()
    d1, d_out = cross.shape
    prior = torch.eye(d1, d_out, dtype=torch.float64)  # [I; 0]
    if math.isinf(ridge):
        return prior
    eye = torch.eye(d1, dtype=torch.float64)
    if ridge > 0:
        penalty = ridge * gram.diagonal().mean().clamp_min(1e-12) * eye
        gram, cross = gram + penalty, cross + penalty @ prior
    else:
        gram = gram + 1e-12 * eye  # only against an exactly singular system
    return torch.cholesky_solve(cross, torch.linalg.cholesky(gram))


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, d + 1): the constant column of the affine maps."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=-1)


def apply_affine(x: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
    """(n, d) states through ``[A^T; b]`` -> (n, d_out), in the states' dtype."""
    solution = solution.to(x.dtype)
    return x @ solution[:-1] + solution[-1]


def hits_and_nll(logits: torch.Tensor, targets: torch.Tensor, model_top: torch.Tensor) -> torch.Tensor:
    """Sums over rows of (top-1 hit, top-5 hit, -log q(target), top-1 == model_top), float64 (4,).
    logits (n, vocab); a top-k hit: fewer than k entries strictly above the target's logit."""
    logits = logits.float()
    target = logits.gather(-1, targets[:, None])  # (n, 1)
    rank = (logits > target).sum(-1) + 1  # (n,)
    nll = (torch.logsumexp(logits, -1) - target[:, 0]).double()
    agree = logits.argmax(-1) == model_top
    return torch.stack([(rank == 1).double().sum(), (rank <= 5).double().sum(), nll.sum(), agree.double().sum()])


def decode_chunks(model, states: torch.Tensor):
    """Decode (n, d_model) states through the model's ``Unembed`` a few rows at a time (at most
    ``DECODE_BUDGET`` bytes of full-vocabulary logits at once): yields (rows, logits) per chunk."""
    step = max(1, DECODE_BUDGET // (4 * model.info.vocab_size))
    for start in range(0, states.shape[0], step):
        rows = slice(start, min(start + step, states.shape[0]))
        yield rows, decode(model, states[rows])


def scores(model, states: torch.Tensor, targets: torch.Tensor, model_top: torch.Tensor) -> torch.Tensor:
    """(horizon, 4) sums of ``hits_and_nll`` of the decoded states (n, d_model) against each row of
    ``targets`` and ``model_top`` (horizon, n): one decode serves every horizon."""
    total = torch.zeros(targets.shape[0], 4, dtype=torch.float64)
    for rows, logits in decode_chunks(model, states):
        total += torch.stack([hits_and_nll(logits, t[rows], m[rows]) for t, m in zip(targets, model_top, strict=True)])
    return total


def top_ids(model, states: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) top-k token ids of the decoded states (n, d_model), in row order."""
    return torch.cat([logits.topk(k, dim=-1).indices for _rows, logits in decode_chunks(model, states)])


@dataclass(frozen=True)
class Positions:
    """The residual states and targets of a set of chunks, at their source positions (``n`` in all)."""

    states: torch.Tensor  # (slot, n, d_model) float32: h_l(t)
    finals: torch.Tensor  # (horizon, n, d_model): h_L(t + N - 1), what (a) is fitted to
    targets: torch.Tensor  # (horizon, n) int64: token t + N
    final_top: torch.Tensor  # (horizon, n) int64: the model's own top-1 for token t + N (from h_L(t + N - 1))
    final_candidates: torch.Tensor  # (id,) int64, sorted: every token in the model's own top-CANDIDATE_TOP_K there


def _all_slots(_unembed, states, _real):
    """Every residual slot, (batch, slot, seq, d_model), for ``tracing.reduce_slots_batch`` (equal
    lengths: no padding)."""
    return torch.stack(states, dim=1)


def read_positions(model, chunks: list[torch.Tensor], progress: Callable[[int], None]) -> Positions:
    """The states of ``chunks`` (token-id tensors, several per forward pass) at their source positions
    ``1 .. len - max(HORIZONS) - 1``; ``progress(done)`` after every forward pass. The last slot is
    decoded once per position (its top tokens serve every horizon)."""
    top, k = max(HORIZONS), min(CANDIDATE_TOP_K, model.info.vocab_size)
    states, finals, targets, final_top = [], [[] for _ in HORIZONS], [[] for _ in HORIZONS], [[] for _ in HORIZONS]
    candidates = []
    done = 0
    for length in sorted({len(c) for c in chunks}):
        if length < top + 2:
            continue
        same = [c for c in chunks if len(c) == length]
        for start in range(0, len(same), BATCH):
            batch = torch.stack(same[start:start + BATCH])  # (row, seq)
            resid = tracing.reduce_slots_batch(model, batch.tolist(), _all_slots).float()  # (row, slot, seq, d)
            source = torch.arange(1, length - top)
            last = resid[:, -1, 1:length - 1]  # (row, seq - 2, d): h_L(t + N - 1) for every source t and N
            ranked = top_ids(model, last.reshape(-1, last.shape[-1]), k).view(len(batch), -1, k)  # (row, seq - 2, k)
            candidates.append(torch.unique(ranked))
            states.append(resid[:, :, source].transpose(0, 1).reshape(resid.shape[1], -1, resid.shape[-1]))
            for i, n in enumerate(HORIZONS):
                finals[i].append(resid[:, -1, source + n - 1].reshape(-1, resid.shape[-1]))
                final_top[i].append(ranked[:, source + n - 2, 0].reshape(-1))  # ``last`` starts at position 1
                targets[i].append(batch[:, source + n].reshape(-1))
            done += len(batch)
            progress(done)
    if not states:
        raise BadRequest(f"The corpus produced no chunks of at least {top + 2} tokens; use a longer chunk_tokens.")
    stack = lambda parts: torch.stack([torch.cat(p) for p in parts])  # noqa: E731
    return Positions(torch.cat(states, dim=1), stack(finals), stack(targets), stack(final_top),
                     torch.unique(torch.cat(candidates)))


def candidate_ids(model, fit: Positions) -> torch.Tensor:
    """(b)'s training vocabulary, sorted: every target token of the fitting positions and the model's
    own top-``CANDIDATE_TOP_K`` tokens at every final state (h_L(t + N - 1), what (a) is fitted to)."""
    return torch.unique(torch.cat([fit.targets.reshape(-1), fit.final_candidates]))


def train_readout(model, x: torch.Tensor, targets: torch.Tensor, init: torch.Tensor, vocab: torch.Tensor,
                  request: FutureLensRequest, step: Callable[[], None] = lambda: None) -> torch.Tensor:
    """(b): the readout ``softcap(W_U[vocab] norm_f(M h + c))`` trained by AdamW on the cross-entropy of
    ``targets`` (token ids, all in ``vocab``) over the rows of ``x`` (n, d_model), starting at ``init``
    (``[M^T; c]`` of (a)); trained as ``init + delta`` so the weight decay pulls toward (a). Returns
    ``[M^T; c]``, float32. ``step()`` is called after every Adam step (progress, cancellation)."""
    init = init.float()
    delta = torch.zeros_like(init, requires_grad=True)
    if request.epochs == 0:
        return init
    unembed = model_unembed(model)
    head = model.module(model.spec.unembed)
    weight = head.weight.detach()[vocab.to(head.weight.device)].float()
    bias = head.bias.detach()[vocab.to(head.weight.device)].float() if getattr(head, "bias", None) is not None else None
    labels = torch.searchsorted(vocab, targets)
    optimiser = torch.optim.AdamW([delta], lr=request.lr, weight_decay=request.weight_decay)
    generator = torch.Generator().manual_seed(request.seed)
    for _epoch in range(request.epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, len(order), TRAIN_BATCH):
            rows = order[start:start + TRAIN_BATCH]
            with model.lock, torch.enable_grad():
                z = apply_affine(x[rows], init + delta)
                normed = unembed.final_norm(z.to(model.device)).float()
                logits = soft_cap(torch.nn.functional.linear(normed, weight, bias), model.info.logit_softcap)
                loss = torch.nn.functional.cross_entropy(logits.cpu(), labels[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            step()
    return (init + delta).detach()


def _predictions(model, state: torch.Tensor, k: int) -> tuple[list[str], np.ndarray]:
    """One (d_model,) state decoded: its top-k tokens and their probabilities."""
    probs = torch.softmax(decode(model, state[None])[0].double(), -1)
    top = probs.topk(k)
    return list(prompts.token_strings(model, top.indices)), top.values.float().numpy()


# ------------------------------------------------------------------------------ the analysis


def check(request: FutureLensRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


def run(ctx, request: FutureLensRequest, progress) -> FutureLensResult:
    model = ctx.model
    encoded = ctx.encode(request.prompt)
    n_slots, n_h, n_m = model.info.n_layers + 1, len(HORIZONS), len(METHODS)
    k = min(request.top_k, model.info.vocab_size)
    fit_chunks = corpus_chunks(model, request.corpus, "train", request.chunk_tokens, request.fit_chunks)
    eval_chunks = corpus_chunks(model, request.corpus, "heldout", request.chunk_tokens, request.eval_chunks)
    if not fit_chunks or not eval_chunks:
        raise BadRequest("The corpus produced no fitting or held-out chunks; use a shorter chunk_tokens.")
    read_share, total = 0.15, len(fit_chunks) + len(eval_chunks)
    fit = read_positions(model, fit_chunks, lambda done: progress(
        read_share * done / total, f"Reading fitting states: {done} of {len(fit_chunks)} chunks"))
    held = read_positions(model, eval_chunks, lambda done: progress(
        read_share * (len(fit_chunks) + done) / total, f"Reading held-out states: {done} of {len(eval_chunks)} chunks"))
    vocab = candidate_ids(model, fit)
    prompt_states = tracing.residual_stream(model, encoded.ids).resid[:, -1]  # (slot, d_model)
    n_fit, n_eval = fit.states.shape[1], held.states.shape[1]

    sums = torch.full((n_m, n_h, n_slots, len(STATS)), float("nan"), dtype=torch.float64)
    pred_tokens = np.full((n_m, n_h, n_slots, k), "", dtype=object)
    pred_probs = np.full((n_m, n_h, n_slots, k), np.nan, dtype=np.float32)
    copy_top1 = torch.stack([(held.final_top[0] == held.targets[i]).double().mean() for i in range(n_h)])
    model_top1 = torch.stack([(held.final_top[i] == held.targets[i]).double().mean() for i in range(n_h)])
    steps_per_map = request.epochs * math.ceil(n_fit / TRAIN_BATCH)
    work = n_slots * n_h * (1 + steps_per_map)
    done = 0

    def advance(message: str) -> None:
        nonlocal done
        done += 1
        progress(read_share + (1 - read_share) * done / work, message)

    def result(slots_done: int) -> FutureLensResult:
        stats = (sums / max(n_eval, 1)).float().numpy()
        return FutureLensResult(
            model_name=model.name, layer_labels=slot_labels(n_slots - 1), horizons=np.array(HORIZONS, dtype=np.int64),
            methods=np.array(METHODS), fit_tokens=n_fit, eval_tokens=n_eval if slots_done else 0,
            candidates=len(vocab), slots_done=slots_done,
            **{name: np.ascontiguousarray(stats[..., i]) for i, name in enumerate(STATS)},
            copy_top1=copy_top1.float().numpy(), model_top1=model_top1.float().numpy(),
            tokens=np.array(encoded.tokens), pred_tokens=pred_tokens.astype(str), pred_probs=pred_probs.copy())

    ctx.partial(result(0))
    with torch.no_grad():
        for slot in range(n_slots):
            x, x_eval = fit.states[slot], held.states[slot]
            gram = (with_ones(x).T @ with_ones(x)).double()
            sums[0, :, slot] = scores(model, x_eval, held.targets, held.final_top)  # the logit lens, every horizon
            tokens, probs = _predictions(model, prompt_states[slot], k)
            for i, n in enumerate(HORIZONS):
                where = f"slot {slot} of {n_slots - 1}, token t+{n}"
                pred_tokens[0, i, slot], pred_probs[0, i, slot] = tokens, probs
                solution = fit_affine(gram, with_ones(x).T.double() @ fit.finals[i].double(), request.ridge)
                advance(f"Fitted the map to the final state: {where}")
                readout = train_readout(model, x, fit.targets[i], solution, vocab, request,
                                        step=lambda where=where: advance(f"Training the direct readout: {where}"))
                for method, solution_m in ((1, solution), (2, readout)):
                    if method == 2 and request.epochs == 0:  # the untrained readout is (a): same numbers
                        sums[2, i, slot], pred_tokens[2, i, slot] = sums[1, i, slot], pred_tokens[1, i, slot]
                        pred_probs[2, i, slot] = pred_probs[1, i, slot]
                        continue
                    sums[method, i, slot] = scores(model, apply_affine(x_eval, solution_m), held.targets[i:i + 1],
                                                   held.final_top[i:i + 1])[0]
                    pred_tokens[method, i, slot], pred_probs[method, i, slot] = _predictions(
                        model, apply_affine(prompt_states[slot][None], solution_m)[0], k)
            if slot + 1 < n_slots:
                ctx.partial(result(slot + 1))
    return result(n_slots)


def summary(result: FutureLensResult) -> list[LayerSummary]:
    """Top-1 accuracy of each method on the token after next (N = 2), per slot."""
    i = list(result.horizons).index(2)
    return [LayerSummary.per_slot(result.model_name, NAME, f"{method}: top-1 accuracy on token t+2",
                                  result.top1[m, i], result.layer_labels) for m, method in enumerate(result.methods)]


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Future lens (linear)", Request=FutureLensRequest, Result=FutureLensResult,
    run=run, check=check, summary=summary,
)
