"""Figures for concept depth: probe accuracy, F1 and ROC-AUC per block on normalised depth l/L,
one line per (model, task, perturbation), the concept depth marked on the accuracy panel."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyses.concept_depth import ConceptDepthResult
from workbench.figures import LINE_COLORS, plain

METRICS = (("accuracy", "accuracy"), ("f1", "F1"), ("roc_auc", "ROC-AUC"))
DASHES = ("solid", "dash", "dot", "dashdot")


def label(result: ConceptDepthResult, with_model: bool) -> str:
    text = plain(result.task) + (f" + {result.noise_tokens} noise tokens" if result.noise_tokens else "")
    return f"{plain(result.model_name)}: {text}" if with_model else text


def curves(results: list[ConceptDepthResult], title: str = "") -> go.Figure:
    """Test-split metrics per block of every result on one normalised-depth axis.

    Colour = task, dash = model (then noise), star = concept depth (first block reaching
    ``fraction`` of the best accuracy), grey line = majority-class accuracy.
    """
    tasks = list(dict.fromkeys(r.task for r in results))
    models = list(dict.fromkeys(r.model_name for r in results))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[name for _, name in METRICS], horizontal_spacing=0.06)
    for result in results:
        color = LINE_COLORS[tasks.index(result.task) % len(LINE_COLORS)]
        style = models.index(result.model_name) * 2 + (1 if result.noise_tokens else 0)
        name = label(result, len(models) > 1)
        x = result.normalised_depth
        for col, (field, metric) in enumerate(METRICS, start=1):
            fig.add_trace(go.Scatter(
                x=x, y=getattr(result, field), name=name, legendgroup=name, showlegend=col == 1,
                mode="lines+markers", marker={"size": 4}, customdata=list(range(result.n_layers)),
                line={"color": color, "dash": DASHES[style % len(DASHES)]},
                hovertemplate=f"{name}<br>block %{{customdata}} (l/L=%{{x:.2f}})<br>{metric} %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[result.depth], y=[float(result.accuracy[result.depth_layer])], mode="markers", legendgroup=name,
            marker={"symbol": "star", "size": 13, "color": color, "line": {"color": "black", "width": 1}},
            showlegend=False, name=f"{name}: concept depth",
            hovertemplate=f"{name}<br>concept depth: block {result.depth_layer} (l/L={result.depth:.2f})"
                          "<extra></extra>",
        ), row=1, col=1)
    if results:
        fig.add_hline(y=max(r.chance for r in results), line={"color": "grey", "width": 1, "dash": "dot"},
                      row=1, col=1)
        fig.add_hline(y=0.5, line={"color": "grey", "width": 1, "dash": "dot"}, row=1, col=3)
    fig.update_xaxes(title_text="normalised depth l/L", range=[0, 1.02], dtick=0.1)
    fig.update_yaxes(range=[0.3, 1.02])
    if not title:
        title = "Concept depth: probe accuracy, F1 and ROC-AUC per layer" + (f" ({', '.join(models)})"
                                                                              if models else "")
    fig.update_layout(title=plain(title), height=430, legend={"orientation": "h", "y": -0.25},
                      margin={"l": 50, "r": 20, "t": 70, "b": 80})
    return fig


FIGURES = {"curves": lambda result: curves([result])}
