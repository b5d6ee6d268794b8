"""Hook-based model runs for patching: batched activation patching and gradient passes.

Owns running a loaded model with plain PyTorch hooks at three kinds of site of every block

    resid   the block input (residual stream before block ``l``)        (batch, seq, d_model)
    attn    the attention module's output                                (batch, seq, d_model)
    mlp     the MLP module's output                                      (batch, seq, d_model)
    heads   the per-head attention outputs (input of the output proj.)   (batch, seq, heads * head_dim)

and the LRP rules RelP (Jafari et al. 2025) swaps into the backward pass. Every rule replaces
a module output ``y`` by ``y.detach() + (linear term that is zero in value)``, so the forward
values are bit-identical and only the gradient changes:

    LN-rule        norms divide by a detached scale:    dy = w * d(x - mean) / s.detach()
    identity rule  elementwise activations:             dy = (act(x) / x).detach() * dx
    half rule      gated product g * u:                 half of the gradient to each factor
    AH-rule        attention probabilities detached (a registered attention function; for an
                   attention that computes its own probabilities, GPT-J's ``_attn``, that method
                   wrapped per module for the duration: adapter ``attn_core``)

Why hooks and not an nnsight trace: the rules must be active while autograd records the
forward, and nnsight notes that swapping module forwards under its wrapping breaks its
interventions; hooks on the HF modules leave nnsight's wrapping untouched. Every run holds
``model.lock`` like every trace does. Module roles come from the adapter's ``ArchitectureSpec``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from workbench.lenses import soft_cap
from workbench.models.loader import LoadedModel

SITES = ("resid", "attn", "mlp")
HEADS = "heads"
AH_IMPLEMENTATION = "layerlens_ah_rule"


@dataclass(frozen=True)
class Rules:
    """Which LRP rules replace the local gradients (all off = plain attribution patching)."""

    ln: bool = False
    identity: bool = False
    half: bool = False
    attention: bool = False

    @property
    def any(self) -> bool:
        return self.ln or self.identity or self.half or self.attention


# ---------------------------------------------------------------------- module roles


def block(model: LoadedModel, layer: int) -> torch.nn.Module:
    return model.module(model.spec.layers)[layer]


def _site_module(model: LoadedModel, layer: int, site: str) -> torch.nn.Module:
    spec, blk = model.spec, block(model, layer)
    if site == "resid":
        return blk
    if site == "attn":
        return blk.get_submodule(spec.attn)
    if site == "mlp":
        return blk.get_submodule(spec.mlp)
    if site == HEADS:
        return blk.get_submodule(spec.attn).get_submodule(spec.attn_out)
    raise ValueError(f"unknown site {site!r}")


def _reads_input(site: str) -> bool:
    return site in ("resid", HEADS)


# ---------------------------------------------------------------------- site hooks


@contextlib.contextmanager
def site_hook(model: LoadedModel, layer: int, site: str, edit: Callable[[torch.Tensor], torch.Tensor | None]):
    """Call ``edit(value)`` on the site's tensor; a returned tensor replaces it downstream."""
    module = _site_module(model, layer, site)
    if _reads_input(site):

        def pre_hook(_module, args, kwargs):
            if args:
                new = edit(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = edit(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def post_hook(_module, _args, output):
            value = output[0] if isinstance(output, tuple) else output
            new = edit(value)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


def _forward(model: LoadedModel, ids: torch.Tensor, last_only: bool = True) -> torch.Tensor:
    """(batch, vocab) final-position logits (``last_only``) or (batch, seq, vocab)."""
    kwargs = {"logits_to_keep": 1} if last_only else {}
    out = model.hf_model(ids.to(model.device), use_cache=False, **kwargs)
    logits = out.logits
    return logits[:, -1] if last_only else logits


def record(model: LoadedModel, ids: torch.Tensor, sites: Sequence[str]) -> tuple[dict, torch.Tensor]:
    """One forward pass of ``ids`` (seq,): {(site, layer): (seq, width)} and the last-position logits."""
    found: dict[tuple[str, int], torch.Tensor] = {}
    with model.lock, torch.no_grad(), contextlib.ExitStack() as stack:
        for site in sites:
            for layer in range(model.info.n_layers):
                stack.enter_context(site_hook(model, layer, site, _store_into(found, (site, layer))))
        logits = _forward(model, ids.unsqueeze(0))
    return {k: v[0].detach().clone() for k, v in found.items()}, logits[0]


def _store_into(found: dict, key) -> Callable[[torch.Tensor], None]:
    def store(value: torch.Tensor) -> None:
        found[key] = value

    return store


# ---------------------------------------------------------------------- activation patching


def patch_positions(
    model: LoadedModel,
    target_ids: torch.Tensor,
    source: torch.Tensor,
    layer: int,
    site: str,
    max_batch: int = 64,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last-position logits (rows, vocab) of ``target_ids`` with ``source[p]`` (seq, width) written into
    the site at position ``p`` only, one position per batch row, for every position (default) or
    the given ``positions``."""
    wanted = torch.arange(len(target_ids)) if positions is None else positions
    rows = []
    for start in range(0, len(wanted), max_batch):
        positions = wanted[start : start + max_batch]

        def write(value, positions=positions):
            value = value.clone()
            value[torch.arange(len(positions)), positions] = source[positions].to(value)
            return value

        with model.lock, torch.no_grad(), site_hook(model, layer, site, write):
            rows.append(_forward(model, target_ids.unsqueeze(0).expand(len(positions), -1)))
    return torch.cat(rows)


def patch_heads(
    model: LoadedModel, target_ids: torch.Tensor, source: torch.Tensor, layer: int
) -> torch.Tensor:
    """Last-position logits (heads, vocab): row ``h`` has head ``h``'s output at every position of
    ``target_ids`` replaced by ``source`` (seq, heads * head_dim)."""
    n_heads = model.info.n_heads
    head_dim = source.shape[-1] // n_heads

    def write(value):
        value = value.clone()
        for head in range(n_heads):
            cols = slice(head * head_dim, (head + 1) * head_dim)
            value[head, :, cols] = source[:, cols].to(value)
        return value

    with model.lock, torch.no_grad(), site_hook(model, layer, HEADS, write):
        return _forward(model, target_ids.unsqueeze(0).expand(n_heads, -1))


# ---------------------------------------------------------------------- LRP rules


def _ln_rule(module: torch.nn.Module, offset: float):
    centred = isinstance(module, torch.nn.LayerNorm)
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)

    def hook(_module, args, output):
        x = args[0]
        xf = x.float()
        if centred:
            xc = xf - xf.mean(-1, keepdim=True)
            scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        else:
            xc = xf
            scale = (xf.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        weight = module.weight.detach().float() + offset if module.weight is not None else 1.0
        delta = xc - xc.detach()  # zero in value, carries the gradient of the (centred) input
        base = output.detach()
        if getattr(module, "bias", None) is not None:
            base = base + (module.bias - module.bias.detach())  # keeps the bias in the graph
        return base + (weight * delta / scale.detach()).to(output.dtype)

    return hook


def _identity_rule(_module, args, output):
    x = args[0]
    ratio = torch.where(x == 0, torch.zeros_like(x), output / torch.where(x == 0, torch.ones_like(x), x))
    return output.detach() + ratio.detach() * (x - x.detach())


def _half_rule(_module, args):
    x = args[0]
    return (0.5 * x + 0.5 * x.detach(), *args[1:])


def _ah_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention with the softmax probabilities detached (AH-rule / CP-LRP)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype).detach()
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _register_ah_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(AH_IMPLEMENTATION, _ah_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(AH_IMPLEMENTATION, eager_mask)


@contextlib.contextmanager
def _attention_implementation(model: LoadedModel, name: str) -> Iterator[None]:
    hf = model.hf_model
    previous = hf.config._attn_implementation
    if name == previous:
        yield
        return
    _register_ah_attention()
    hf.set_attn_implementation(name)
    try:
        yield
    finally:
        hf.set_attn_implementation(previous)


def _ah_core(core: Callable) -> Callable:
    """``core(query, key, value, mask) -> (out, probs)`` with the output recomputed from detached probs."""

    def wrapped(query, key, value, *args, **kwargs):
        _out, probs = core(query, key, value, *args, **kwargs)
        return torch.matmul(probs.detach(), value), probs

    return wrapped


@contextlib.contextmanager
def _ah_on_attention_cores(model: LoadedModel) -> Iterator[None]:
    """The AH rule for attention modules that compute their own probabilities (adapter ``attn_core``):
    an instance attribute shadows the method while the rules are on (the module's forward, which
    nnsight wraps, is left alone)."""
    spec = model.spec
    modules = [block(model, layer).get_submodule(spec.attn) for layer in range(model.info.n_layers)]
    for module in modules:
        setattr(module, spec.attn_core, _ah_core(getattr(module, spec.attn_core)))
    try:
        yield
    finally:
        for module in modules:
            delattr(module, spec.attn_core)  # the class's method shows through again


@contextlib.contextmanager
def lrp_rules(model: LoadedModel, rules: Rules) -> Iterator[None]:
    """Install the chosen rules on every block (and the final norm) for the duration."""
    spec = model.spec
    handles = []
    try:
        for layer in range(model.info.n_layers):
            blk = block(model, layer)
            mlp = blk.get_submodule(spec.mlp)
            if rules.ln:
                for norm in spec.block_norms:
                    module = blk.get_submodule(norm)
                    handles.append(module.register_forward_hook(_ln_rule(module, spec.norm_weight_offset)))
            if rules.identity:
                handles.append(mlp.get_submodule(spec.mlp_act).register_forward_hook(_identity_rule))
            if rules.half and spec.gated:
                handles.append(mlp.get_submodule(spec.mlp_out).register_forward_pre_hook(_half_rule))
        if rules.ln:
            final = model.module(spec.final_norm)
            handles.append(final.register_forward_hook(_ln_rule(final, spec.norm_weight_offset)))
        if rules.attention and spec.attn_core:
            with _ah_on_attention_cores(model):
                yield
        else:
            with _attention_implementation(model, AH_IMPLEMENTATION if rules.attention else "eager"):
                yield
    finally:
        for handle in handles:
            handle.remove()


def final_logits(model: LoadedModel, raw: torch.Tensor, rules: Rules) -> torch.Tensor:
    """The final logit soft-cap (Gemma; ``lenses.soft_cap``), under the identity rule if on."""
    capped = soft_cap(raw, model.info.logit_softcap)
    if not rules.identity or capped is raw:
        return capped
    ratio = torch.where(raw == 0, torch.ones_like(raw), capped / torch.where(raw == 0, torch.ones_like(raw), raw))
    return capped.detach() + ratio.detach() * (raw - raw.detach())


# ---------------------------------------------------------------------- gradient pass


@dataclass(frozen=True)
class GradientPass:
    """Values and gradients of ``metric`` at every site, from one forward and one backward."""

    metric: float
    logits: torch.Tensor  # (vocab,) last-position logits, as the model computes them
    values: dict  # {(site, layer): (seq, width)}
    grads: dict  # {(site, layer): (seq, width)}
    output_relevance: float  # sum(logits * d metric / d logits) at the last position
    bias_relevance: torch.Tensor  # (n_layers + 1,) sum(b * d metric / d b) per block, then the final norm


def gradient_pass(
    model: LoadedModel,
    ids: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
    sites: Sequence[str],
    rules: Rules = Rules(),
) -> GradientPass:
    """Forward ``ids`` (seq,) recording live site tensors, then ``d metric(logits) / d site``.

    ``metric`` maps the (vocab,) last-position logits to a scalar. With rules on, the
    gradient is RelP's propagation coefficient; the forward values are unchanged.
    """
    live: dict[tuple[str, int], torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    unembed = model.module(model.spec.unembed)
    biases = _bias_parameters(model)
    with model.lock, torch.enable_grad(), contextlib.ExitStack() as stack:
        stack.enter_context(_gradients_flow(model, [b for group in biases for b in group]))
        stack.enter_context(lrp_rules(model, rules))
        for site in sites:
            for layer in range(model.info.n_layers):
                stack.enter_context(site_hook(model, layer, site, _store_into(live, (site, layer))))
        handle = unembed.register_forward_hook(lambda _m, _a, out: raw.__setitem__("logits", out))
        stack.callback(handle.remove)
        model.hf_model(ids.unsqueeze(0).to(model.device), use_cache=False, logits_to_keep=1)
        logits = final_logits(model, raw["logits"][0, -1], rules)
        value = metric(logits)
        keys = list(live)
        flat_biases = [b for group in biases for b in group]
        grads = torch.autograd.grad(
            value, [live[k] for k in keys] + [logits] + flat_biases, allow_unused=True
        )
    site_grads = grads[: len(keys)]
    logit_grad = grads[len(keys)]
    bias_grads = iter(grads[len(keys) + 1 :])
    bias_relevance = torch.zeros(len(biases), dtype=torch.float64)
    for index, group in enumerate(biases):
        for param in group:
            grad = next(bias_grads)
            if grad is not None:
                bias_relevance[index] += float((param.detach().double() * grad.double()).sum())
    return GradientPass(
        metric=float(value.detach()),
        logits=logits.detach().float(),
        values={k: live[k][0].detach() for k in keys},
        grads={k: _zeros_if_none(g, live[k])[0].detach() for k, g in zip(keys, site_grads, strict=True)},
        output_relevance=float((logits.detach().double() * logit_grad.double()).sum()),
        bias_relevance=bias_relevance,
    )


@contextlib.contextmanager
def _gradients_flow(model: LoadedModel, biases: list[torch.nn.Parameter]) -> Iterator[None]:
    """Make the embedding output and the biases differentiable for one pass, even if the
    model's parameters were frozen elsewhere; every flag is restored afterwards."""
    frozen = [b for b in biases if not b.requires_grad]
    for bias in frozen:
        bias.requires_grad_(True)

    def differentiable(_module, _args, output):
        return output if output.requires_grad else output.detach().requires_grad_(True)

    handle = model.module(model.spec.embed).register_forward_hook(differentiable)
    try:
        yield
    finally:
        handle.remove()
        for bias in frozen:
            bias.requires_grad_(False)


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _bias_parameters(model: LoadedModel) -> list[list[torch.nn.Parameter]]:
    """Additive parameters per block, then those of the final norm (and the unembedding)."""
    groups = []
    for layer in range(model.info.n_layers):
        groups.append([p for name, p in block(model, layer).named_parameters() if name.endswith("bias")])
    tail = [p for name, p in model.module(model.spec.final_norm).named_parameters() if name.endswith("bias")]
    tail += [p for name, p in model.module(model.spec.unembed).named_parameters() if name.endswith("bias")]
    groups.append(tail)
    return groups
