"""The data behind a figure, and file names.

Owns ``figure_data`` (every plotted value of a figure as one CSV row: trace, name, type, x, y,
and z / text for heatmap cells) with its per-trace row helpers, ``plotly_array`` (plotly 7's
typed arrays, ``{dtype, bdata, shape}``, decoded to numpy) and ``slug`` (text made safe as a
file name). Needs no browser and no analysis.
"""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def figure_data(fig: go.Figure) -> pd.DataFrame:
    """Every plotted value as one row: trace, its name and type, x, y (and z / text for heatmaps)."""
    frames = [_trace_rows(index, trace) for index, trace in enumerate(fig.to_dict().get("data", []))]
    frames = [f for f in frames if len(f)]
    columns = ["trace", "name", "type", "x", "y", "z", "text"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


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
    return frame.reindex(columns=["trace", "name", "type", "x", "y", "z", "text"])
