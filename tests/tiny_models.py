"""Tiny random models and a tiny tokenizer, built from configs (no download), for unit tests.

Biases get random values (HF zero-initialises them, which hides bugs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Alice and Bob walked to the park, and Bob threw a ball to Alice.",
    "One two three four five six seven eight nine ten.",
]

ARCHITECTURES = ("gpt2", "llama", "qwen2", "gemma3_text")
# The families checked by tests/test_architecture_matrix.py only (not the ``tiny_dir`` fixture, which
# would run hundreds of tests once more per family): parallel blocks (GPT-NeoX/Pythia, Phi, GPT-J),
# soft-capped attention and logits (Gemma 2), norms after the sublayers (OLMo 2), a fused gate/up
# projection (Phi-3), and Mistral / Qwen3 (same row as Llama).
MATRIX_ARCHITECTURES = ("gpt_neox", "gemma2", "olmo2", "phi", "phi3", "gptj", "mistral", "qwen3")


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def build_config(arch: str, vocab_size: int):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2)
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=128, **common)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, **common,
        )
    if arch == "qwen2":
        return Qwen2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, **common,
        )
    if arch == "gemma3_text":
        return Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
            final_logit_softcapping=30.0, sliding_window=8, **common,
        )
    return _matrix_config(arch, common)


# Llama-like sizes shared by the matrix families that name them so
_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=128)


def _matrix_config(arch: str, common: dict):
    import transformers

    if arch == "gpt_neox":  # Pythia's layout: parallel residual, a quarter of each head rotary
        return transformers.GPTNeoXConfig(**_SMALL, rotary_pct=0.25, use_parallel_residual=True, **common)
    if arch == "gemma2":
        # caps small enough to bite on a random model's small logits and attention scores
        return transformers.Gemma2Config(
            **_SMALL, num_key_value_heads=2, head_dim=16, final_logit_softcapping=0.5,
            attn_logit_softcapping=0.25, query_pre_attn_scalar=16, sliding_window=8, **common,
        )
    if arch == "olmo2":
        return transformers.Olmo2Config(**_SMALL, num_key_value_heads=2, pad_token_id=0, **common)
    if arch == "phi":  # Phi-2's layout: one shared layernorm, partial rotary, biases, an lm_head bias
        return transformers.PhiConfig(**_SMALL, partial_rotary_factor=0.5, **common)
    if arch == "phi3":
        return transformers.Phi3Config(**_SMALL, num_key_value_heads=2, pad_token_id=0, **common)
    if arch == "gptj":
        return transformers.GPTJConfig(n_embd=64, n_layer=3, n_head=4, rotary_dim=8, n_positions=128, **common)
    if arch == "mistral":
        return transformers.MistralConfig(**_SMALL, num_key_value_heads=2, sliding_window=8, **common)
    if arch == "qwen3":
        return transformers.Qwen3Config(**_SMALL, num_key_value_heads=2, head_dim=16, **common)
    raise ValueError(arch)


# Encoder-decoder families: adapter rows for their two stacks (adapter.ENCODER_DECODER_ARCHITECTURES),
# refused by every decoder-only analysis
SEQ2SEQ_ARCHITECTURES = ("t5", "bart")


def build_seq2seq_model(arch: str, vocab_size: int = 50, seed: int = 0):
    """A tiny random T5 or BART (``AutoModelForSeq2SeqLM``) in eval mode, biases randomised."""
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    if arch == "t5":
        config = transformers.T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
                                       vocab_size=vocab_size, decoder_start_token_id=0)
    elif arch == "bart":
        config = transformers.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                         decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                         vocab_size=vocab_size, max_position_embeddings=64)
    else:
        raise ValueError(arch)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_(0.0, 0.1)
    return model


def build_model_dir(arch: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` model plus the tiny tokenizer into ``directory``."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = AutoModelForCausalLM.from_config(build_config(arch, len(tokenizer)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name or ".ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)  # non-trivial norm weights
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def logits_with_attention(model, token_ids, implementation: str):
    """A plain forward pass under another attention implementation (e.g. "sdpa"), then back to
    eager, which every trace relies on: the baseline that checks eager attention changes nothing."""
    import torch

    hf_model = model.hf_model
    with model.lock, torch.no_grad():
        hf_model.set_attn_implementation(implementation)
        try:
            out = hf_model(token_ids.unsqueeze(0).to(model.device))
        finally:
            hf_model.set_attn_implementation("eager")
    return out.logits[0].float().cpu()


# (seed, weight scale): the random BART's decoder hardly reads its encoder at HF's init scale (every
# slot then decodes the same tokens); larger weights make the slots' outputs differ, as a trained model's do
SEQ2SEQ_SEEDS = {"t5": (0, 1.0), "bart": (2, 8.0)}


def build_seq2seq_dir(arch: str, directory):
    """A tiny random T5 or BART saved with the tiny tokenizer (weights scaled per ``SEQ2SEQ_SEEDS``)."""
    tokenizer = build_tokenizer()
    seed, scale = SEQ2SEQ_SEEDS[arch]
    model = build_seq2seq_model(arch, vocab_size=len(tokenizer), seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name and "shared" not in name:
                param.mul_(scale)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
