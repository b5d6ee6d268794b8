"""Figures of activation patching alone (the ground truth): one (block x position) map per site,
or (block x head) for the heads."""

from __future__ import annotations

from functools import partial

import numpy as np
import plotly.graph_objects as go

from workbench.analyses.activation_patching import COMPONENTS, HEADS, ActivationPatchingResult
from workbench.errors import BadRequest
from workbench.figures.patching import COMPONENT_TITLES, DIVERGING


def ground_truth(result: ActivationPatchingResult, component: str) -> go.Figure:
    """The patching metric m with one site's clean activation written into the corrupted run."""
    scores = result.scores(component)
    if scores.size == 0:
        raise BadRequest(f"this run did not patch {COMPONENT_TITLES[component]} (heads were not asked for)")
    limit = float(np.abs(scores).max()) or 1.0
    n_blocks, width = scores.shape
    x_title = "head" if component == HEADS else "position"
    fig = go.Figure(go.Heatmap(
        z=scores, x=np.arange(width), y=np.arange(n_blocks), colorscale=DIVERGING, zmid=0.0, zmin=-limit,
        zmax=limit, colorbar={"title": {"text": "effect on m"}},
        hovertemplate=f"block %{{y}}, {x_title} %{{x}}: %{{z:.4f}}<extra></extra>",
    ))
    fig.update_layout(
        title=f"Activation patching, {COMPONENT_TITLES[component]} "
        f"(LD clean {result.ld_clean:.3f}, corrupted {result.ld_corrupted:.3f})",
        xaxis={"title": x_title, "tickmode": "array", "tickvals": list(range(width))},
        yaxis={"title": "block", "tickmode": "array", "tickvals": list(range(n_blocks))},
        height=max(380, 16 * n_blocks + 200),
    )
    return fig


FIGURES = {component: partial(ground_truth, component=component) for component in COMPONENTS}
