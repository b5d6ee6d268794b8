"""Figures: results -> plotly figures. No streamlit here, no computation beyond layout.

Shared conventions: a colour-blind-safe sequential scale (viridis), tokens made
visible with ``display_token``, categorical axes drawn on integer positions so
repeated tokens never merge.
"""

SEQUENTIAL = "Viridis"
LINE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7")  # Okabe-Ito, colour-blind safe


def display_token(token: str) -> str:
    """Make whitespace visible: a bare space becomes '␣', newlines and tabs are escaped."""
    text = str(token).replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if text.strip() == "":
        return "␣" * len(text) if text else "∅"
    return text


def say_when_empty(fig, message: str):
    """A figure with no trace says why in its middle, instead of showing empty axes."""
    if not fig.data:
        fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig
