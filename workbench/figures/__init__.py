"""Figures: results -> plotly figures. No streamlit here, no computation beyond layout.

Shared conventions: a colour-blind-safe sequential scale (viridis), tokens made
visible with ``display_token``, categorical axes drawn on integer positions so
repeated tokens never merge (``figures.axes``: their labels, shortened token labels, log axes).
"""

import re
import unicodedata

SEQUENTIAL = "Viridis"
LINE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7")  # Okabe-Ito, colour-blind safe


UNKNOWN_BYTE = "<0x??>"  # a replacement character U+FFFD whose byte is no longer known
_INVISIBLE = {"Cc", "Cf", "Co", "Cn", "Cs"}  # control, format (zero-width), private-use, unassigned: shown as <U+200B>
ZWSP = "\u200b"  # zero-width space: keeps a token's '<b>' or '&amp;' from being read as plotly markup
# plotly reads these tags and entities in titles, legends, annotations, tick labels and hover text
# ('<a href>' becomes a clickable link); '%{' starts a substitution in a hover template.
_MARKUP = re.compile(r"<(?=/?(?:a|b|br|em|font|i|s|span|sub|sup|u)[\s>/])|&(?=#\d+;|#x[0-9a-f]+;|[a-z]+;)|%(?=\{)",
                     re.I)


def plain(text: str) -> str:
    """User text (a model name or path, a task or file name, a title holding them) shown literally
    in a plotly title, legend, annotation or hover template: a zero-width space after each '<' or '&'
    that plotly would read as markup (a link, bold, an entity) and after a '%' before '{'."""
    return _MARKUP.sub(lambda m: m.group() + ZWSP, str(text))


def display_token(token: str) -> str:
    """Make whitespace visible: a bare space becomes '␣', newlines and tabs are escaped. Byte
    tokens come as '<0xE2>' from ``prompts.token_strings``; a U+FFFD left in text decoded
    elsewhere (its byte lost) is shown as '<0x??>', never as the replacement character; characters
    that draw nothing (zero-width, controls, private use) as '<U+200B>'. A token
    that looks like plotly's markup ('<br>', '<b>', '&amp;') gets a zero-width space after its
    '<' or '&', so the chart shows it as written (``export.figure_data`` drops that space)."""
    text = str(token).replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    text = "".join(f"<U+{ord(c):04X}>" if unicodedata.category(c) in _INVISIBLE else c for c in text)
    text = text.replace("\ufffd", UNKNOWN_BYTE)
    if text.strip() == "":
        return "␣" * len(text) if text else "∅"
    return plain(text)


def say_when_empty(fig, message: str):
    """A figure with no trace says why in its middle, instead of showing empty axes."""
    if not fig.data:
        fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig
