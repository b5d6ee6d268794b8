"""The data behind a figure, and file names.

Owns ``figure_data`` (every plotted value of a figure as one CSV row: trace, name, type, x, y,
and z / text for heatmap cells, then ``x_label`` / ``y_label``: the name the chart gives that
position, e.g. layer "embed" or a token, where an axis labels integer positions) with its per-trace
row helpers, ``plotly_array`` (plotly 7's typed arrays, ``{dtype, bdata, shape}``, decoded to
numpy) and ``slug`` (text made safe as a file name). Needs no browser and no analysis.
"""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures import ZWSP
from workbench.figures.axes import recorded_labels

COLUMNS = ["trace", "name", "type", "x", "y", "z", "text", "x_label", "y_label"]


def figure_data(fig: go.Figure) -> pd.DataFrame:
    """Every plotted value as one row: trace, its name and type, x, y (and z / text for heatmaps),
    and the labels the chart shows for x and y where its axis names integer positions (layers,
    tokens, heads): the full label recorded by ``figures.axes.keep_labels``, else the tick text
    at that position; empty where the axis has no such label (plain numbers, log axes)."""
    spec = fig.to_dict()
    layout = spec.get("layout", {})
    frames = []
    for index, trace in enumerate(spec.get("data", [])):
        frame = _trace_rows(index, trace)
        if not len(frame):
            continue
        for letter in ("x", "y"):
            labels = _axis_labels(layout, _axis_name(trace.get(f"{letter}axis", letter)))
            frame[f"{letter}_label"] = [_label_of(v, labels) for v in frame[letter]] if labels else None
        for column in ("x", "y", "text", "x_label", "y_label"):  # plotly-markup guards are no data
            frame[column] = [v.replace(ZWSP, "") if isinstance(v, str) else v for v in frame[column]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[COLUMNS] if frames else pd.DataFrame(columns=COLUMNS)


def _axis_name(ref: str) -> str:
    """A trace's axis reference ('x', 'y2') as its layout key ('xaxis', 'yaxis2')."""
    return f"{ref[0]}axis{ref[1:]}"


def _axis_labels(layout: dict, name: str, seen: tuple = ()) -> dict[int, str]:
    """Integer position -> label on the axis ``name``: recorded full labels first, then the axis's
    tick text; an axis that ``matches`` another (shared axes of subplots) takes that one's."""
    axis = layout.get(name) or {}
    if axis.get("type") == "log":
        return {}
    recorded = recorded_labels(layout).get(name)
    if recorded:
        return {i: str(label) for i, label in enumerate(recorded) if label is not None}
    ticks, text = axis.get("tickvals"), axis.get("ticktext")
    if ticks is not None and text is not None:
        pairs = zip(plotly_array(ticks).tolist(), plotly_array(text).tolist(), strict=False)
        return {int(v): str(t) for v, t in pairs if _is_position(v)}
    match = axis.get("matches")
    if match and _axis_name(match) not in seen:
        return _axis_labels(layout, _axis_name(match), (*seen, name))
    return {}


def _is_position(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and float(value).is_integer()


def _label_of(value, labels: dict[int, str]):
    return labels.get(int(value)) if _is_position(value) else None


def plotly_array(value) -> np.ndarray:
    """A figure attribute as a numpy array: plotly 7 holds typed arrays as {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return flat.reshape([int(n) for n in str(value.get("shape", len(flat))).split(",")])
    return np.asarray(value)


def _as_array(value) -> np.ndarray | None:
    """A trace attribute as an object array (mixed numbers and text), or None."""
    return None if value is None else plotly_array(value).astype(object)


def slug(text: str, fallback: str = "figure") -> str:
    """``text`` made safe as a file name: runs of other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or fallback


def _trace_rows(index: int, trace: dict) -> pd.DataFrame:
    kind = trace.get("type", "scatter")
    x, y, z, text = (_as_array(trace.get(k)) for k in ("x", "y", "z", "text"))
    if z is not None and z.ndim == 2:  # heatmap: one row per cell
        rows, cols = z.shape
        xs = x if x is not None and len(x) == cols else np.arange(cols)
        ys = y if y is not None and len(y) == rows else np.arange(rows)
        grid_y, grid_x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        frame = pd.DataFrame({"x": xs[grid_x.ravel()], "y": ys[grid_y.ravel()], "z": z.ravel()})
        if text is not None and text.shape == z.shape:
            frame["text"] = text.ravel()
    else:
        length = max((len(a) for a in (x, y) if a is not None and a.ndim == 1), default=0)
        frame = pd.DataFrame({
            "x": x if x is not None and x.ndim == 1 and len(x) == length else [None] * length,
            "y": y if y is not None and y.ndim == 1 and len(y) == length else [None] * length,
        })
        if text is not None and text.ndim == 1 and len(text) == length:
            frame["text"] = text
    frame.insert(0, "type", kind)
    frame.insert(0, "name", trace.get("name"))
    frame.insert(0, "trace", index)
    return frame.reindex(columns=COLUMNS[:7])
