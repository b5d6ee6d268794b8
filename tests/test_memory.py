"""Memory: a logit lens on a prompt at the token limit decodes one residual slot at a time inside its
trace (``logit_lens.lens_statistics``), so its peak memory stays well below the (layer, seq, vocab)
float32 logits it would need all at once; a prompt over the limit is refused before the model runs.
The peak is measured in a fresh interpreter, where nothing but the lens runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import build_tokenizer
from workbench import lenses, prompts, tracing
from workbench.analyses import logit_lens
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import Settings
from workbench.errors import BadPrompt
from workbench.service import Workbench

LIMIT = 256  # tokens: the settings' limit and the model's max positions
VOCAB = 64_000
N_LAYERS = 12
PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORD = " Mary"  # one token in the tiny tokenizer, and no BOS is added: n words = n tokens


@pytest.fixture(scope="module")
def big_vocab_dir(tmp_path_factory) -> Path:
    """A narrow Llama (d=32) with a 64k vocabulary: its full lens logits are large, its weights small."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    directory = tmp_path_factory.mktemp("big_vocab")
    tokenizer = build_tokenizer()
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(VOCAB - len(tokenizer))])
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=LIMIT, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def wb(tmp_path):
    backend = Workbench(Settings(cache_dir=tmp_path / "cache", max_prompt_tokens=LIMIT))
    yield backend
    backend.close()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.fixture(scope="module")
def lens_in_fresh_process(big_vocab_dir, tmp_path_factory):
    """target -> what the logit lens at the token limit measured in a fresh interpreter (``_measure_main``),
    run once per target. Peak RSS is a property of the whole process: in the long pytest process, after a
    thousand other tests, the allocator's history adds to it, so the lens alone is measured alone."""
    measured = {}

    def get(target: str) -> dict:
        if target not in measured:
            cache_dir = tmp_path_factory.mktemp("memory_cache")
            code = "import sys; from tests.test_memory import _measure_main; _measure_main(*sys.argv[1:])"
            done = subprocess.run([sys.executable, "-c", code, str(big_vocab_dir), str(cache_dir), target],
                                  cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-4000:]
            measured[target] = json.loads(done.stdout.strip().splitlines()[-1])
        return measured[target]

    return get


def _measure_main(model_dir: str, cache_dir: str, target: str) -> None:
    """In the fresh interpreter: load, reset the peak, run the lens, print the facts as one JSON line."""
    wb = Workbench(Settings(cache_dir=Path(cache_dir), max_prompt_tokens=LIMIT))
    try:
        model = wb.model(model_dir)
        prompt = WORD * LIMIT
        traces = []
        plain = logit_lens.lens_statistics
        logit_lens.lens_statistics = lambda *a, **k: traces.append(plain(*a, **k)) or traces[-1]
        can_measure = _reset_peak_rss()
        baseline = _peak_rss_bytes()
        result = wb.logit_lens(model_dir, LogitLensRequest(prompt, target=target, top_k=3))
        peak_increase = _peak_rss_bytes() - baseline
        print(json.dumps({
            "tokens": len(prompts.encode(model, prompt, wb.settings).ids),
            "can_measure": can_measure,
            "peak_increase": peak_increase,
            "top_ids_shape": list(result.top_ids.shape),
            "kl_shape": list(result.kl_to_final.shape),
            "kl_last_max": float(np.abs(result.kl_to_final[-1]).max()),
            "target_ranks": int(result.target_rank.size),
            "traces": len(traces),
            "trace_shapes": [list(tensor.shape) for trace in traces for tensor in dataclasses.astuple(trace)],
        }))
    finally:
        wb.close()


def test_lens_at_the_token_limit_keeps_one_slot_of_logits(lens_in_fresh_process):
    n_slots = N_LAYERS + 1
    all_at_once = n_slots * LIMIT * VOCAB * 4  # bytes of the float32 logits of every slot: 852 MB
    facts = lens_in_fresh_process("")
    assert facts["tokens"] == LIMIT  # exactly at the limit
    assert facts["top_ids_shape"] == [n_slots, LIMIT, 3]
    # what leaves the trace is small: top-k, KL and the target per slot, never a vocabulary axis
    assert facts["traces"] == 1 and all(VOCAB not in shape for shape in facts["trace_shapes"])
    assert facts["kl_last_max"] <= 1e-9  # the last row is the model's own output
    if facts["can_measure"]:
        peak_increase = facts["peak_increase"]
        # decoded one slot at a time inside the trace: a few (seq, vocab) arrays live at once, not all slots'
        assert peak_increase < all_at_once / 2, (
            f"peak RSS grew by {peak_increase / 2**20:.0f} MiB; all slots' logits are {all_at_once / 2**20:.0f} MiB"
        )
        print(f"peak RSS increase {peak_increase / 2**20:.0f} MiB vs {all_at_once / 2**20:.0f} MiB for all slots")


@pytest.mark.parametrize("target", ["", WORD])
def test_lens_at_the_token_limit_stays_within_its_decoding_budget(lens_in_fresh_process, target):
    """With or without a target token, the lens at 256 tokens holds at most its decoding budget of
    (seq, vocab) arrays (``lenses.LENS_BUDGET_BYTES``, 256 MiB): nothing of a decoded chunk outlives it.
    The allowance on top is for the trace itself (states, attention, the model's last-position logits)."""
    per_array = LIMIT * VOCAB * 4  # one (seq, vocab) float32 array: 62.5 MiB here
    assert lenses.lens_chunk_slots(LIMIT, VOCAB) == 1  # 2 * 1 + 2 arrays of 62.5 MiB fit 256 MiB
    allowance = 48 << 20
    facts = lens_in_fresh_process(target)
    if not facts["can_measure"]:
        pytest.skip("peak RSS cannot be reset on this system")
    peak_increase = facts["peak_increase"]
    assert facts["kl_shape"] == [N_LAYERS + 1, LIMIT] and (facts["target_ranks"] > 0) == bool(target)
    print(f"target {target!r}: peak RSS increase {peak_increase / 2**20:.0f} MiB "
          f"(budget {lenses.LENS_BUDGET_BYTES / 2**20:.0f} MiB, one array {per_array / 2**20:.1f} MiB)")
    assert peak_increase <= lenses.LENS_BUDGET_BYTES + allowance


def test_over_limit_prompt_is_refused_before_tracing(wb, big_vocab_dir, monkeypatch):
    name = str(big_vocab_dir)
    wb.model(name)  # loaded: the refusal below must come from the token count, not from loading
    traced = []
    for function in ("residual_stream", "attention_and_states", "sublayer_stream", "reduce_slots"):
        original = getattr(tracing, function)
        monkeypatch.setattr(tracing, function,
                            lambda *a, _f=original, _n=function, **k: traced.append(_n) or _f(*a, **k))
    with pytest.raises(BadPrompt, match=f"{LIMIT + 1} tokens long; the limit for .* is {LIMIT} tokens"):
        wb.logit_lens(name, LogitLensRequest(WORD * (LIMIT + 1)))
    assert traced == []
    assert wb.store.count_results() == 0
