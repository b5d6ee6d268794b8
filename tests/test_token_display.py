"""Tokens on charts: byte pieces are shown as '<0xE2>' (never U+FFFD or an HTML entity), plotly markup
in a token is shown as written, and long tokens are cut with '…' in cells and ticks while the hover
and the CSV keep them whole."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.analysis_examples import examples
from tests.test_figure_export import lens_result
from tests.tiny_models import build_tokenizer
from workbench import export, prompts, registry
from workbench.config import PROJECT_ROOT
from workbench.figures import ZWSP, attention_sinks, display_token
from workbench.figures import logit_lens as lens_figures
from workbench.figures.axes import TICK_CHARS, cell_chars, shorten, text_width

TEXT = "ꙮ 日本 a"  # a 3-byte letter, CJK, ASCII
GEMMA = Path(os.environ.get("LAYERLENS_MODELS_DIR") or PROJECT_ROOT / "cache" / "models") / "gemma3-270m"


def as_model(tokenizer) -> SimpleNamespace:
    return SimpleNamespace(tokenizer=tokenizer)  # token_strings needs only the tokenizer


def bytes_of(pieces) -> bytes:
    """The bytes the token strings stand for: '<0xNN>' is one byte, anything else its UTF-8."""
    return b"".join(bytes([int(part[3:5], 16)]) if re.fullmatch(r"<0x[0-9A-F]{2}>", part) else part.encode()
                    for piece in pieces for part in re.split(r"(<0x[0-9A-F]{2}>)", piece) if part)


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer with byte fallback (as Gemma's): 'a', '▁' and the 256 bytes."""
    vocab = {"<unk>": 0, "▁": 1, "a": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_byte_level_bpe_pieces_show_their_bytes():
    tokenizer = build_tokenizer()  # byte-level BPE, as GPT-2 and SmolLM2
    ids = tokenizer(TEXT).input_ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # decoded alone, the pieces are U+FFFD
    pieces = prompts.token_strings(as_model(tokenizer), ids)
    assert not any("\ufffd" in p for p in pieces) and any("<0x" in p for p in pieces)
    assert bytes_of(pieces) == TEXT.encode()  # nothing lost: the pieces spell the prompt's bytes
    assert prompts.bytes_text(b" \xe6\x97") == " <0xE6><0x97>" and prompts.bytes_text("é".encode()) == "é"


def test_byte_fallback_tokens_show_the_tokenizers_own_byte_names():
    tokenizer = byte_fallback_tokenizer()
    ids = tokenizer("ꙮ a", add_special_tokens=False).input_ids
    assert [tokenizer.decode([i]) for i in ids][:3] == ["\ufffd"] * 3
    pieces = prompts.token_strings(as_model(tokenizer), ids)
    assert pieces[:3] == ("<0xEA>", "<0x99>", "<0xAE>") and "".join(pieces[3:]) == " a"


@pytest.mark.skipif(not (GEMMA / "tokenizer.json").exists(), reason="the converted Gemma is not here")
def test_gemma_byte_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(GEMMA)
    ids = tokenizer("ꙮ is", add_special_tokens=False).input_ids
    pieces = prompts.token_strings(as_model(tokenizer), ids)
    assert pieces[:3] == ("<0xEA>", "<0x99>", "<0xAE>") and not any("\ufffd" in p for p in pieces)


def test_display_token_shows_bytes_and_markup_as_written():
    assert display_token("\ufffd") == "<0x??>"  # text decoded elsewhere: its byte is lost, not its place
    assert display_token(" <0xE2>") == " <0xE2>"
    for token in ("<br>", "<b>", "</sup>", "&amp;", "&#39;"):
        shown = display_token(token)
        assert shown.replace(ZWSP, "") == token and shown != token  # plotly would read these as markup
    assert display_token("<bos>") == "<bos>" and display_token("&#") == "&#" and display_token("<sub") == "<sub"
    assert display_token("a\u200bb") == "a<U+200B>b" and display_token("\u00ad") == "<U+00AD>"  # else invisible


def test_byte_tokens_reach_the_chart_and_its_csv_readably():
    result = lens_result(4, ["<0xEA>", "<0x99>", " is"], top=lambda s, p: "\ufffd" if p == 0 else "<br>")
    fig = lens_figures.heatmap(result)
    dumped = json.dumps(fig.to_plotly_json(), ensure_ascii=False, default=str)
    assert "\ufffd" not in dumped and "&#" not in dumped
    data = export.figure_data(fig)
    assert set(data.x_label) == {"<0xEA>", "<0x99>", " is"}
    assert set(data.text) == {"<0x??>", "<br>"}  # the CSV has no zero-width guards


# ------------------------------------------------------------------ long tokens (Gemma's)

LONG = [" Unterstützungsleistungen", "▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁", "日本語の単語です", " is"]


def test_long_tokens_are_cut_in_cells_and_ticks_and_whole_in_hover_and_csv():
    seq = 18  # Gemma's 18-token prompts: cells of ~6 characters on screen
    tokens = (LONG * 5)[:seq]
    result = lens_result(19, tokens, top=lambda s, p: tokens[(s + p) % seq])
    fig = lens_figures.heatmap(result)
    width = cell_chars(seq)
    cells = np.asarray(fig.data[0].text, dtype=object)
    assert max(text_width(t) for t in cells.ravel()) <= width
    assert any(t.endswith("…") for t in cells.ravel())
    hover = np.asarray(fig.data[0].customdata, dtype=object)
    for (row, pos), cell in np.ndenumerate(cells):
        assert display_token(result.top_tokens[row, pos, 0]) in hover[row, pos]
        if cell.endswith("…"):
            assert display_token(result.top_tokens[row, pos, 0]).startswith(cell[:-1])
    ticks = list(fig.layout.xaxis.ticktext)
    assert all(text_width(t) <= TICK_CHARS for t in ticks) and ticks[0] == shorten(display_token(LONG[0]), TICK_CHARS)
    data = export.figure_data(export.styled(fig, export.paper_style("double column")))
    assert data.x_label.tolist() == [display_token(tokens[int(x)]) for x in data.x]  # whole in the CSV


def test_sink_layer_token_heatmap_cuts_long_token_ticks(workbench, tiny_dirs):
    request = examples()["attention_sinks"]
    result = workbench.run(registry.entry("attention_sinks"), str(tiny_dirs["gemma3_text"]), request)
    tokens = np.array((LONG * 8)[:len(result.tokens)])
    fig = attention_sinks.layer_token_heatmap(dataclasses.replace(result, tokens=tokens))
    assert all(text_width(t) <= TICK_CHARS for t in fig.layout.xaxis.ticktext)
    hover = np.asarray(fig.data[0].customdata, dtype=object)
    assert hover[0].tolist() == [display_token(t) for t in tokens]
    data = export.figure_data(fig)
    assert data.x_label.tolist() == [display_token(tokens[int(x)]) for x in data.x]
