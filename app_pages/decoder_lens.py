"""DecoderLens page (Langedijk et al. 2024): input text in, the decoder's greedy output from every encoder
layer out. Needs an encoder-decoder model (T5, BART); every bundled catalog model is decoder-only."""

import streamlit as st

import ui
from workbench.analyses.decoder_lens import ANALYSIS, MAX_NEW_TOKENS, DecoderLensRequest
from workbench.models import catalog

model = ui.header(
    "DecoderLens",
    "The decoder cross-attends to the states of one encoder layer instead of the encoder's output and "
    "generates greedily (Langedijk et al. 2024). Row 'embed' reads the embeddings, row l the output of encoder "
    "block l (through the encoder's final norm, as the model reads its last one); the last row is the model's "
    "own greedy output. Cells: the generated tokens, coloured by each one's probability.",
)
if model in catalog.CATALOG:  # the bundled models are all decoder-only: nothing to run
    st.info(
        "DecoderLens needs an encoder-decoder model (T5, mT5, UMT5 or BART); the selected model is decoder-only. "
        "To open one, choose **Other** in the sidebar's model list and type a local model directory (config.json, "
        "safetensors weights and tokenizer) or a hub id such as `google-t5/t5-small` (downloaded only when "
        "LAYERLENS_ALLOW_HUB=1, or already in the HuggingFace cache)."
    )
    st.stop()

form = ui.RequestForm("dl", DecoderLensRequest("translate English to German: The house is wonderful."),
                      skip=("slots",))
with form.box("decoder_lens_form", "Run DecoderLens"):
    st.text_area("Input text (what the encoder reads)", key=form.key("prompt"))
    st.number_input("Tokens to generate per layer", 1, MAX_NEW_TOKENS, key=form.key("max_new_tokens"))

if (result := form.run(ANALYSIS, "Enter an input text and press **Run DecoderLens**.")) is not None:
    ui.chart(ANALYSIS, "table", result, key="dl_table")
    ui.chart(ANALYSIS, "sequence_logprob", result, key="dl_logprob")
