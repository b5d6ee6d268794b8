"""Front-end helpers shared by the pages: the per-process backend, the model picker, running an
analysis under a progress box, its charts with their export controls, and shareable links.
Widgets and layout only; every computation goes through ``workbench.service.Workbench``.

A page builds a request (``ui.RequestForm``: kept in session state, mirrored to the URL), runs
it with ``ui.run(analysis, request)`` and draws ``ui.chart(analysis, figure, result, key=...)``:
``run`` remembers which model and request produced the result, so the chart's export bundle can
regenerate it without the page naming them again.

Model names from a shared link are someone else's input: the sidebar opens a linked name only if a
link may name it (``Workbench.check_linked_model``: catalog, hub ids, directories under
``LAYERLENS_MODEL_ROOTS``) and otherwise leaves its text field empty for the user to type the path;
``run`` applies the same rule to a model a page got from its link (e.g. Compare's second model),
unless the user typed that name into the sidebar in this session.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import streamlit as st

from workbench.analyses import Analysis
from workbench.errors import ModelNotAllowed, WorkbenchError
from workbench.export import FigureSource
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
        st.error(escape(str(exc)))
        st.stop()


# ---------------------------------------------------------------- text


_MARKDOWN = re.compile(r"([\\`*_\[\]<>#$~|:&])")
_LINE_START = re.compile(r"^(\s*)([-+=]|\d+[.)])", re.MULTILINE)
# Autolink literals (GFM: 'www.x', 'http://x', 'a@b.c') and Streamlit's ':material/icon:' are found in
# the text AFTER backslash escapes are resolved, so a backslash cannot stop them: an invisible word
# joiner inside each ('www\u2060.', ':\u2060//', '\u2060@', ':\u2060material/') does.
WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?<=www)(?=\.)|(?<=:)(?=//|material/)|(?=@)", re.IGNORECASE)


def escape(text: str) -> str:
    """``text`` (a prompt, token, model name or message holding them) shown literally where
    Streamlit renders Markdown: no emphasis, links (bracketed or bare: 'www.', 'http://', e-mail
    addresses), images, HTML, LaTeX, emoji or icon codes, headings or lists. Bare links keep their
    look but get an invisible word joiner (``WORD_JOINER``) that stops the renderer linking them."""
    text = _LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), _MARKDOWN.sub(r"\\\1", str(text)))
    return _AUTOLINK.sub(WORD_JOINER, text)


def header(title: str, caption: str) -> str:
    """The page's title and its one-paragraph explanation; returns the model chosen in the sidebar."""
    st.title(title)
    st.caption(caption)
    return selected_model()


# ---------------------------------------------------------------- model choice


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
        format_func=model_label,
    )
    st.session_state["_model_choice"] = choice
    if choice != OTHER:
        entry = catalog.CATALOG[choice]
        st.sidebar.caption(escape(f"{entry.detail} {entry.note}".strip()))
        return _use_model(choice)
    name = st.sidebar.text_input(
        "Model directory or hub id", value=st.session_state.get("_model_custom", ""), key="model_custom"
    ).strip()
    st.session_state["_model_custom"] = name
    if name:  # typed here, or a link's name that links may open: this session may use it anywhere
        st.session_state.setdefault("_typed_models", set()).add(name)
        st.session_state.pop("_model_refused", None)
    elif refused := st.session_state.get("_model_refused"):
        st.sidebar.error(escape(refused))
    return _use_model(name)


def model_label(name: str) -> str:
    """A model choice as the pickers show it: the catalog's label, else its short name (a
    directory's last component, never the server path)."""
    return catalog.CATALOG[name].label if name in catalog.CATALOG else catalog.display_name(name)


def _model_from_url(choices: list[str]) -> None:
    """A shared link's ``?model=`` picks the model on a session's first run, if a link may name it;
    else the sidebar says why and waits for the user to type the path."""
    if "_model_choice" in st.session_state or not st.query_params.get("model"):
        return
    name = st.query_params["model"]
    st.session_state["_model_choice"] = name if name in choices else OTHER
    if name in choices:
        return
    try:
        workbench().check_linked_model(name)
    except WorkbenchError as exc:
        st.session_state["_model_refused"] = str(exc)
        return
    st.session_state["_model_custom"] = name


def _check_model(model: str) -> None:
    """Raise unless this session may open ``model``: typed into the sidebar, or one a link may name."""
    if not model and st.session_state.get("_model_refused"):
        raise ModelNotAllowed(st.session_state["_model_refused"])
    if model not in st.session_state.get("_typed_models", ()):
        workbench().check_linked_model(model)


def _use_model(name: str) -> str:
    st.session_state["model_name"] = name
    if name and st.query_params.get("model") != name:
        st.query_params["model"] = name
    return name


def selected_model() -> str:
    """The model chosen in the sidebar (drawn by app.py before the page runs)."""
    return st.session_state.get("model_name", catalog.DEFAULT_MODEL)


# ---------------------------------------------------------------- running


def remaining(fraction: float | None, elapsed: float) -> str:
    """A rough time left on this machine from the share done so far (after the first few percent)."""
    if fraction is None or not 0.02 <= fraction < 1.0 or elapsed < 1.0:
        return ""
    left = elapsed * (1.0 - fraction) / fraction
    return f" (about {left:.0f} s left)" if left < 90 else f" (about {left / 60:.0f} min left)"


NOT_CACHED = "Not cached:"  # how the store's note on an entry too large for the cache begins (store.eviction)


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[float | None, str], None]]:
    """A status box with a progress bar, fed by the backend's progress callback; once a share of
    the work is done it also says roughly how long the rest will take on this machine."""
    status = st.status(escape(label), expanded=False)
    bar = status.progress(0.0)
    started = time.monotonic()
    notes: list[str] = []  # the cache's "Not cached: ..." note outlives the box's last label

    def report(fraction: float | None, message: str) -> None:
        if message.startswith(NOT_CACHED):
            notes.append(message)
        status.update(label=escape(message + remaining(fraction, time.monotonic() - started)))
        if fraction is not None:
            bar.progress(min(1.0, max(0.0, float(fraction))))

    try:
        yield report
    except BaseException:
        status.update(state="error", label=f"{escape(label)}: failed")
        raise
    status.update(state="complete", label=f"{escape(label)}: done")
    for note in notes:
        st.info(escape(note))


def compute(label: str, call: Callable[[Callable[[float | None, str], None]], T]) -> T | None:
    """Run ``call(report)`` under a progress box labelled ``label``; errors become messages."""

    def run_call() -> T:
        with progress(label) as report:
            return call(report)

    return guarded(run_call)


def guarded(action: Callable[[], T]) -> T | None:
    """Run a backend call; show its error as a message instead of a traceback."""
    try:
        return action()
    except WorkbenchError as exc:
        st.error(escape(str(exc)))
    except Exception as exc:  # an unexpected bug: say so plainly, keep the traceback in the server log
        log.exception("unexpected error in a backend call")
        st.error(escape(f"Unexpected error ({type(exc).__name__}): {exc}. Details are in the server log."))
    return None


def run(analysis: Analysis, request, model_name: str | None = None, label: str | None = None, on_partial=None):
    """``analysis`` on ``request`` (on the sidebar's model unless ``model_name``), under a progress
    box; returns the result, or None after showing why it failed. The result remembers its source
    (see ``source``), so ``chart`` can offer a bundle that regenerates its figures. ``on_partial``
    draws the partial results an analysis reports while it runs (e.g. patching: AtP and RelP first)."""
    model = model_name or selected_model()
    if guarded(lambda: _check_model(model) or True) is None:
        return None
    result = compute(label or f"{analysis.title} on {catalog.display_name(model)}",
                     lambda report: workbench().run(analysis, model, request, report, on_partial))
    if result is not None:
        remember(result, FigureSource(analysis.name, model, request))
    return result


def remember(result, source: FigureSource) -> None:
    """Record that ``source`` (analysis, model, request) produced ``result``: for results a page
    got from a service call other than ``run`` (e.g. the tuned lens, whose step the service fills in)."""
    sources = st.session_state.setdefault("_result_sources", weakref.WeakKeyDictionary())
    sources[result] = source


def live_chart(figure) -> None:
    """A chart of a partial result, drawn into a container the next partial replaces. Partials can
    draw the very same figure twice (e.g. the prompt trajectory while held-out chunks run), which
    Streamlit refuses without distinct keys: every live chart gets a new one."""
    count = st.session_state.get("_live_charts", 0) + 1
    st.session_state["_live_charts"] = count
    st.plotly_chart(figure, key=f"live_chart_{count}")


def source(result) -> FigureSource | None:
    """The analysis run that produced ``result`` in this session, if ``run`` (or ``remember``) saw it."""
    return st.session_state.get("_result_sources", {}).get(result)


from ui.export_panel import chart, plot  # noqa: E402  (needs the helpers above)
from ui.links import RequestForm  # noqa: E402

__all__ = ["OTHER", "RequestForm", "chart", "compute", "escape", "guarded", "header", "model_label", "model_picker",
           "plot", "progress", "remember", "run", "selected_model", "source", "workbench"]
