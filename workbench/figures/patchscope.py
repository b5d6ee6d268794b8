"""Figures for the Patchscope: the source slot x target slot grid and its diagonal as a strip."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.patchscope import PatchscopeResult
from workbench.figures import SEQUENTIAL, display_token, plain
from workbench.figures.axes import CELL_TEXT_PX, cell_chars, keep_labels, shorten


def _hover(result: PatchscopeResult, i: int, j: int) -> str:
    k = result.top_ids.shape[-1]
    ranked = "<br>".join(f"{r + 1}. {display_token(result.top_tokens[i, j, r])}  {result.top_probs[i, j, r]:.3f}"
                         for r in range(k))
    return (f"source slot {result.source_labels[i]} → target slot {result.target_labels[j]}"
            f"<br>decoded: {display_token(result.decoded[i, j])}"
            f"<br>first token p={result.first_prob[i, j]:.3f}; top-{k}:<br>{ranked}")


def _title(result: PatchscopeResult, what: str) -> str:
    token = display_token(result.source_tokens[result.source_position])
    return (f"Patchscope {what}: {token} (source position {result.source_position:d}) read at "
            f"{display_token(result.target_tokens[result.placeholder])} (target position {result.placeholder:d}), "
            f"{plain(result.model_name)}")


def grid(result: PatchscopeResult) -> go.Figure:
    """Rows: source slots; columns: target slots; colour: probability of the first decoded token;
    text: the decoded continuation (cut to the cell; the hover gives it whole with the top-k)."""
    n_src, n_tgt = result.first_prob.shape
    width = cell_chars(n_tgt)
    text = np.vectorize(lambda t: shorten(display_token(t), width), otypes=[object])(result.decoded)
    hover = np.array([[_hover(result, i, j) for j in range(n_tgt)] for i in range(n_src)], dtype=object)
    fig = go.Figure(go.Heatmap(
        z=result.first_prob, x=np.arange(n_tgt), y=np.arange(n_src), text=text, texttemplate="%{text}",
        textfont={"size": CELL_TEXT_PX}, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
        colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0, colorbar={"title": {"text": "first-token p"}},
    ))
    fig.update_layout(
        title=_title(result, "grid"),
        xaxis={"title": "target slot (residual patched in the target prompt)", "tickmode": "array",
               "tickvals": list(range(n_tgt)), "ticktext": list(result.target_labels)},
        yaxis={"title": "source slot (state read from the source prompt)", "tickmode": "array",
               "tickvals": list(range(n_src)), "ticktext": list(result.source_labels)},
        height=max(380, 40 * n_src + 180), margin={"l": 70, "r": 20, "t": 70, "b": 60},
    )
    return keep_labels(fig, xaxis=result.target_labels, yaxis=result.source_labels)


def diagonal(result: PatchscopeResult) -> go.Figure:
    """The cells whose target slot is their source slot, one per slot, as a strip over depth."""
    cells = result.diagonal()
    if not cells:
        fig = go.Figure()
        fig.update_layout(title=_title(result, "diagonal"), height=200, annotations=[{
            "text": "No source slot is also a target slot: pick overlapping slots to see the diagonal.",
            "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}])
        return fig
    labels = [str(result.source_labels[i]) for i, _ in cells]
    width = cell_chars(len(cells))
    z = np.array([[result.first_prob[i, j] for i, j in cells]])
    text = np.array([[shorten(display_token(result.decoded[i, j]), width) for i, j in cells]], dtype=object)
    hover = np.array([[_hover(result, i, j) for i, j in cells]], dtype=object)
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(len(cells)), y=[0], text=text, texttemplate="%{text}", textfont={"size": CELL_TEXT_PX},
        customdata=hover, hovertemplate="%{customdata}<extra></extra>", colorscale=SEQUENTIAL, zmin=0.0, zmax=1.0,
        colorbar={"title": {"text": "first-token p"}},
    ))
    fig.update_layout(
        title=_title(result, "per layer (target slot = source slot)"),
        xaxis={"title": "slot (layer)", "tickmode": "array", "tickvals": list(range(len(cells))), "ticktext": labels},
        yaxis={"showticklabels": False},
        height=220, margin={"l": 40, "r": 20, "t": 70, "b": 60},
    )
    return keep_labels(fig, xaxis=labels)


FIGURES = {"grid": grid, "diagonal": diagonal}
