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
    _model_from_url(choices)
    remembered = st.session_state.get("_model_choice", catalog.DEFAULT_MODEL)
    choice = st.sidebar.selectbox(
        "Model", choices, key="model_choice", index=choices.index(remembered) if remembered in choices else 0,
        format_func=lambda n: catalog.CATALOG[n].label if n in catalog.CATALOG else n,
    )
    st.session_state["_model_choice"] = choice
    if choice != OTHER:
        st.sidebar.caption(catalog.CATALOG[choice].note)
        return _use_model(choice)
    name = st.sidebar.text_input(
        "Model directory or hub id", value=st.session_state.get("_model_custom", ""), key="model_custom"
    ).strip()
    st.session_state["_model_custom"] = name
    return _use_model(name)


def _model_from_url(choices: list[str]) -> None:
    """A shared link's ``?model=`` picks the model on a session's first run."""
    if "_model_choice" in st.session_state or not st.query_params.get("model"):
        return
    name = st.query_params["model"]
    st.session_state["_model_choice"] = name if name in choices else OTHER
    if name not in choices:
        st.session_state["_model_custom"] = name


def _use_model(name: str) -> str:
    st.session_state["model_name"] = name
    if name and st.query_params.get("model") != name:
        st.query_params["model"] = name
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


# ---------------------------------------------------------------- shareable URLs


def url_default(key: str, default, choices=None, bounds: tuple | None = None):
    """Seed widget ``key`` from the URL parameter of the same name, else ``default``.

    Call it right before drawing the widget with ``key=key`` and no ``value=``: the widget then
    shows what a shared link asked for. A value the widget cannot take (not among ``choices``,
    outside ``bounds``, not a number) falls back to ``default``.
    """
    if key not in st.session_state:
        st.session_state[key] = _url_value(key, default, choices, bounds)
    return st.session_state[key]


def _url_value(key: str, default, choices, bounds):
    if key not in st.query_params:
        return default
    try:
        if isinstance(default, list):
            value = [v for v in st.query_params.get_all(key) if choices is None or v in choices]
            return value
        raw = st.query_params[key]
        value = raw in ("1", "true", "True") if isinstance(default, bool) else type(default)(raw)
    except ValueError:
        return default
    if choices is not None and value not in choices:
        return default
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return default
    return value


def share(params: dict) -> None:
    """Write the page's request (and the model) into the URL, so the address reproduces the view."""
    encoded = {"model": selected_model()}
    for name, value in params.items():
        if isinstance(value, bool):
            encoded[name] = "1" if value else "0"
        elif isinstance(value, (list, tuple)):
            encoded[name] = [str(v) for v in value]
        else:
            encoded[name] = str(value)
    st.query_params.from_dict(encoded)


def opened_from_link(request_key: str, params: list[str]) -> bool:
    """True once per session when the URL carries this page's request: a shared link runs it."""
    if request_key in st.session_state or st.session_state.get(f"_linked_{request_key}"):
        return False
    st.session_state[f"_linked_{request_key}"] = True
    return all(p in st.query_params for p in params)


from ui.export_panel import chart  # noqa: E402  (needs the helpers above)

__all__ = ["chart", "compute", "guarded", "model_picker", "opened_from_link", "progress", "selected_model", "share",
           "url_default", "workbench"]
