"""Charts with their export controls: PNG / SVG / PDF at a paper size, the plotted data as CSV,
and the regenerable bundle (.zip). Widgets only: rendering is ``workbench.export``'s, and runs
only when a download is clicked (Streamlit's deferred download data)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

import ui
from workbench import export
from workbench.analyses import Analysis

MIME = {"svg": "image/svg+xml", "png": "image/png", "pdf": "application/pdf"}


def chart(analysis: Analysis, figure: str, result, key: str | None = None) -> None:
    """Figure ``figure`` of ``analysis``'s ``result``, with export controls whose bundle regenerates
    it from the run that produced the result (remembered by ``ui.run``)."""
    source = ui.source(result)
    spec = export.spec_of(analysis.name, figure, source.model_name, source.request) if source else None
    plot(analysis.figure(figure, result), key or f"{analysis.name}_{figure}", spec, name=f"{analysis.name}-{figure}")


def plot(fig: go.Figure, key: str, spec: export.FigureSpec | None = None, name: str | None = None,
         select: bool = False):
    """Draw ``fig`` and, under it, its export controls: for views that are no single analysis's
    figure (a training curve, several results in one plot, the compare overlay).

    ``spec`` names the analysis runs the figure is drawn from; with it the bundle's manifest can
    regenerate the figure (``python -m workbench regenerate``), without it the bundle records the
    figure and its data only. ``select``: a click on a point reruns the page and the chart's selection
    state (``.selection.points``) is returned.
    """
    filename = export.slug(name or key)
    config = {"toImageButtonOptions": {"format": "svg", "filename": filename}}
    if select:
        event = st.plotly_chart(fig, key=key, config=config, on_select="rerun", selection_mode="points")
    else:
        event = st.plotly_chart(fig, key=key, config=config)
    with st.expander("Export figure", expanded=False):
        _controls(fig, key, spec, filename)
    return event if select else None


def _controls(fig: go.Figure, key: str, spec: export.FigureSpec | None, filename: str) -> None:
    size = st.selectbox("Size", list(export.PAPER_STYLES), index=list(export.PAPER_STYLES).index(export.DEFAULT_STYLE),
                        key=f"{key}_export_size")
    style = export.paper_style(size)
    palettes = ", ".join(export.palette_names(fig)) or "greys"  # styling changes no trace's palette
    st.caption(f"{style.width_in:g} × {style.height_in:g} in, {style.font_pt:g} pt, colours: {ui.escape(palettes)}; "
               f"PNG at {export.PNG_DPI:d} dpi.")
    has_browser = export.find_browser() is not None
    if not has_browser:
        st.info(export.NO_BROWSER)
    columns = st.columns(5)
    if has_browser:
        for column, fmt in zip(columns, export.FORMATS, strict=False):
            column.download_button(
                fmt.upper(), data=lambda fmt=fmt: _image(fig, fmt, style), file_name=f"{filename}.{fmt}",
                mime=MIME[fmt], key=f"{key}_export_{fmt}", on_click="ignore",
            )
    columns[3].download_button("Data (CSV)", data=lambda: export.figure_data(export.styled(fig, style)).to_csv(
        index=False), file_name=f"{filename}.csv", mime="text/csv", key=f"{key}_export_csv", on_click="ignore")
    formats = export.FORMATS if has_browser else ()
    columns[4].download_button(
        "Bundle (.zip)", data=lambda: _bundle(fig, spec, style, formats), file_name=f"{filename}-bundle.zip",
        mime="application/zip", key=f"{key}_export_bundle", on_click="ignore",
        help="Figure, data (CSV), figure JSON and a manifest; regenerate with "
             "`python -m workbench regenerate <bundle.zip>`." if spec else "Figure, data (CSV) and figure JSON.",
    )


def _image(fig: go.Figure, fmt: str, style: export.PaperStyle) -> bytes:
    return export.shared_exporter().render(export.styled(fig, style), fmt, style)


def _bundle(fig: go.Figure, spec: export.FigureSpec | None, style: export.PaperStyle, formats) -> bytes:
    if spec is not None:
        return export.make_bundle(ui.workbench(), spec, style, formats).zip_bytes()
    return export.figure_bundle(fig, style, formats).zip_bytes()
