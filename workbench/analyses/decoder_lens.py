"""DecoderLens: what the decoder writes from each encoder layer's states.

Langedijk, Mohebbi, Sarti, Zuidema & Jumelet (2024), "DecoderLens: Layerwise Interpretation of
Encoder-Decoder Transformers". For an encoder-decoder model (T5, BART: ``adapter.EncoderDecoderSpec``
rows) and every encoder slot ``l`` (slot 0: the input to encoder block 0, i.e. the embeddings; slot
``l``: the output of encoder block ``l - 1``; slot ``L``: the last block's output), the decoder
cross-attends to ``final_norm(h_l)`` instead of the encoder's own output and generates a whole
sequence greedily. The encoder's final norm (T5's ``final_layer_norm``; BART has none) is applied to
every slot, as the model applies it to its last one, so slot ``L`` is exactly the encoder output and
its row is the model's own greedy generation (``model.generate(do_sample=False, num_beams=1)``; tested).

Decoding goes through the model's own ``generate`` (its generation config's rules, e.g. BART's forced
end token at the length limit, apply as in normal use), one batch row per slot: every slot's sequence is
decoded in one batched generation with the KV cache. Per slot: the generated token ids and strings (up
to and including the end token), the text, each chosen token's probability under the model's own
softmax (before generation rules), and the sequence log-probability (their sum of logs).

Encoder slots are read with plain forward hooks on the encoder blocks (``spec.encoder.layers``); the model
is a plain ``AutoModelForSeq2SeqLM`` (``loader.load_encoder_decoder``), not traced through nnsight, and
runs locally only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench import prompts
from workbench.analyses.base import Analysis
from workbench.axes import check_shapes, slot_labels
from workbench.errors import BadRequest

NAME = "decoder_lens"
VERSION = 1
MAX_NEW_TOKENS = 64
MAX_SLOTS = 256
ENCODE_SHARE = 0.1  # of the progress bar


@dataclass(frozen=True)
class DecoderLensRequest:
    prompt: str  # the encoder's input text
    max_new_tokens: int = 12
    slots: tuple[int, ...] = ()  # encoder slots, 0 (embeddings) .. L (encoder output); empty: all

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise BadRequest(f"max_new_tokens must be a whole number, not {self.max_new_tokens!r}.")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise BadRequest(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}.")
        if not isinstance(self.slots, tuple):
            raise BadRequest("slots must be a list of encoder slot numbers (empty: all).")
        if len(self.slots) > MAX_SLOTS:
            raise BadRequest(f"At most {MAX_SLOTS} slots, got {len(self.slots)}.")
        for slot in self.slots:
            if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
                raise BadRequest(f"Encoder slots are whole numbers from 0 (the embeddings) up, not {slot!r}.")
        if len(set(self.slots)) != len(self.slots):
            raise BadRequest("Each encoder slot may be asked for once.")


@dataclass(frozen=True, eq=False)
class DecoderLensResult:
    model_name: str
    n_layers: int  # encoder blocks L; slots run 0..L
    slots: np.ndarray  # (row,) int64: the encoder slot of each row, ascending
    slot_labels: np.ndarray  # (row,) str: "embed", then the encoder block that wrote the slot
    input_tokens: np.ndarray  # (seq,) str: the encoder's input tokens
    token_ids: np.ndarray  # (row, step) int64 generated ids, -1 after a row's end
    tokens: np.ndarray  # (row, step) str, "" after a row's end
    probs: np.ndarray  # (row, step) float32: the chosen token's probability (model softmax), NaN after the end
    lengths: np.ndarray  # (row,) int64: tokens generated, the end token included
    finished: np.ndarray  # (row,) bool: the row ended with an end token (else it hit max_new_tokens)
    texts: np.ndarray  # (row,) str: the generated text, special tokens left out
    logprob: np.ndarray  # (row,) float64: sum over the row's tokens of log p (nats)

    def __post_init__(self):
        rows, steps = self.token_ids.shape
        check_shapes(self, {"slots": (rows,), "slot_labels": (rows,), "tokens": (rows, steps),
                            "probs": (rows, steps), "lengths": (rows,), "finished": (rows,), "texts": (rows,),
                            "logprob": (rows,)})


def check(request: DecoderLensRequest, settings) -> None:
    prompts.check_text(request.prompt, settings)


# ------------------------------------------------------------------------------ the math


def encoder_slots(model, ids: torch.Tensor) -> torch.Tensor:
    """(slot, seq, d_model) every encoder slot of ``ids`` (seq,), each through the encoder's final norm
    (if the family has one): slot L is the encoder's own output."""
    spec, hf_model = model.spec, model.hf_model
    blocks = hf_model.get_submodule(spec.encoder.layers)
    states: list[torch.Tensor] = []

    def block_input(_module, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    def block_output(_module, _args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [blocks[0].register_forward_pre_hook(block_input, with_kwargs=True)]
    handles += [block.register_forward_hook(block_output) for block in blocks]
    try:
        with torch.no_grad():
            hf_model.get_encoder()(input_ids=ids.unsqueeze(0).to(model.device))
    finally:
        for handle in handles:
            handle.remove()
    if len(states) != len(blocks) + 1:
        raise RuntimeError(f"read {len(states)} encoder slots, expected {len(blocks) + 1}")
    stacked = torch.cat(states)  # (slot, seq, d_model)
    if spec.encoder.final_norm:
        with torch.no_grad():
            stacked = hf_model.get_submodule(spec.encoder.final_norm)(stacked)
    return stacked


class _StepProgress:
    """A generation stopping criterion that only reports progress (and so lets a cancel stop generation)."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.step = progress, total, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.step += 1
        self.progress(ENCODE_SHARE + (1 - ENCODE_SHARE) * min(1.0, self.step / self.total),
                      f"DecoderLens: decoded token {self.step} of at most {self.total}")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def end_token_ids(hf_model) -> set[int]:
    """The ids that end a generated sequence (the generation config's end-of-sequence ids)."""
    eos = hf_model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def greedy_decode(model, states: torch.Tensor, max_new_tokens: int, progress=lambda f, m: None):
    """Generate greedily from encoder states (row, seq, d_model), one row per slot, in one batch.

    Returns (ids (row, step) int64, lengths (row,), finished (row,) bool, logprobs (row, step) float64):
    the generated tokens (after the decoder start; rows that ended earlier padded by ``generate``), how
    many of them each row generated (end token included), whether it ended, and each chosen token's log
    probability under the model's softmax of its raw logits (0 beyond the row's end)."""
    from transformers import StoppingCriteriaList
    from transformers.modeling_outputs import BaseModelOutput

    hf_model = model.hf_model
    mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
    with torch.no_grad():
        out = hf_model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
            do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, output_logits=True,
            return_dict_in_generate=True,
            stopping_criteria=StoppingCriteriaList([_StepProgress(progress, max_new_tokens)]),
        )
    steps = len(out.logits)
    ids = out.sequences[:, -steps:].cpu()  # (row, step)
    logits = torch.stack(out.logits, dim=1).double().cpu()  # (row, step, vocab)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    is_end = torch.zeros_like(ids, dtype=torch.bool)
    for end in end_token_ids(hf_model):
        is_end |= ids == end
    finished = is_end.any(dim=1)
    lengths = torch.where(finished, is_end.int().argmax(dim=1) + 1, torch.full_like(finished, steps, dtype=torch.long))
    inside = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
    return ids, lengths, finished, torch.where(inside, logprobs, torch.zeros_like(logprobs))


def run(ctx, request: DecoderLensRequest, progress) -> DecoderLensResult:
    model = ctx.encoder_decoder_model
    encoded = prompts.encode(model, request.prompt, ctx.settings)
    n_layers = model.info.n_layers
    slots = sorted(request.slots) if request.slots else list(range(n_layers + 1))
    if slots[-1] > n_layers:
        raise BadRequest(f"Encoder slot {slots[-1]} does not exist: {model.name} has {n_layers} encoder layers, "
                         f"so its slots are 0 (the embeddings) to {n_layers} (the encoder output).")
    with model.lock:
        progress(0.0, f"DecoderLens: reading the {n_layers + 1} encoder slots")
        states = encoder_slots(model, encoded.ids)[slots]
        progress(ENCODE_SHARE, f"DecoderLens: decoding from {len(slots)} encoder slots")
        ids, lengths, finished, logprobs = greedy_decode(model, states, request.max_new_tokens, progress)
    inside = (torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).numpy()
    kept = [ids[row, : int(lengths[row])] for row in range(len(slots))]
    tokens = np.full(ids.shape, "", dtype=object)
    for row, row_ids in enumerate(kept):
        tokens[row, : len(row_ids)] = prompts.token_strings(model, row_ids)
    return DecoderLensResult(
        model_name=model.name,
        n_layers=n_layers,
        slots=np.asarray(slots, dtype=np.int64),
        slot_labels=slot_labels(n_layers)[slots],
        input_tokens=np.array(encoded.tokens, dtype=str),
        token_ids=np.where(inside, ids.numpy(), -1).astype(np.int64),
        tokens=tokens.astype(str),
        probs=np.where(inside, logprobs.exp().numpy(), np.nan).astype(np.float32),
        lengths=lengths.numpy().astype(np.int64),
        finished=finished.numpy().astype(bool),
        texts=np.array([model.tokenizer.decode(row_ids, skip_special_tokens=True) for row_ids in kept], dtype=str),
        logprob=logprobs.sum(dim=1).numpy().astype(np.float64),
    )


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="DecoderLens", Request=DecoderLensRequest, Result=DecoderLensResult,
    run=run, check=check, encoder_decoder=True,
)
