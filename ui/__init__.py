"""Front-end helpers shared by the pages: the per-process backend, the model picker,
progress widgets and error display. Widgets and layout only; every computation goes
through ``workbench.service.Workbench``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.models import catalog
from workbench.service import Workbench

T = TypeVar("T")
OTHER = "Other: local directory or hub id"
log = logging.getLogger("layerlens.ui")


@st.cache_resource(show_spinner="Opening the cache")
def _workbench() -> Workbench:
    return Workbench()


def workbench() -> Workbench:
    """The process-wide backend; stops the page with a clear message if the cache is unusable."""
    try:
        return _workbench()
    except WorkbenchError as exc:
        st.error(str(exc))
        st.stop()


def model_picker() -> str:
    """Sidebar model choice; returns the name the backend resolves (catalog, path or hub id).

    ``app.py`` draws it around every page. Widget state does not survive a page switch,
    so the choice is also kept under plain session-state keys and restored on the next page.
    """
    st.sidebar.title("LayerLens")
    choices = catalog.catalog_names() + [OTHER]
    remembered = st.session_state.get("_model_choice", catalog.DEFAULT_MODEL)
    choice = st.sidebar.selectbox(
        "Model", choices, key="model_choice", index=choices.index(remembered) if remembered in choices else 0,
        format_func=lambda n: catalog.CATALOG[n].label if n in catalog.CATALOG else n,
    )
    st.session_state["_model_choice"] = choice
    if choice != OTHER:
        st.sidebar.caption(catalog.CATALOG[choice].note)
        st.session_state["model_name"] = choice
        return choice
    name = st.sidebar.text_input(
        "Model directory or hub id", value=st.session_state.get("_model_custom", ""), key="model_custom"
    ).strip()
    st.session_state["_model_custom"] = name
    st.session_state["model_name"] = name
    return name


def selected_model() -> str:
    """The model chosen in the sidebar (drawn by app.py before the page runs)."""
    return st.session_state.get("model_name", catalog.DEFAULT_MODEL)


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[float | None, str], None]]:
    """A status box with a progress bar, fed by the backend's progress callback."""
    status = st.status(label, expanded=False)
    bar = status.progress(0.0)

    def report(fraction: float | None, message: str) -> None:
        status.update(label=message)
        if fraction is not None:
            bar.progress(min(1.0, max(0.0, float(fraction))))

    try:
        yield report
    except BaseException:
        status.update(state="error", label=f"{label}: failed")
        raise
    status.update(state="complete", label=f"{label}: done")


def compute(label: str, call: Callable[[Callable[[float | None, str], None]], T]) -> T | None:
    """Run ``call(report)`` under a progress box labelled ``label``; errors become messages."""

    def run() -> T:
        with progress(label) as report:
            return call(report)

    return guarded(run)


def guarded(action: Callable[[], T]) -> T | None:
    """Run a backend call; show its error as a message instead of a traceback."""
    try:
        return action()
    except WorkbenchError as exc:
        st.error(str(exc))
    except Exception as exc:  # an unexpected bug: say so plainly, keep the traceback in the server log
        log.exception("unexpected error in a backend call")
        st.error(f"Unexpected error ({type(exc).__name__}): {exc}. Details are in the server log.")
    return None
