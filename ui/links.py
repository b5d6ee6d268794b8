"""Shareable links: a page's request object, kept in session state and mirrored to the URL.

One serialisation: the request's JSON fields (``request_json``, as the cache, the CLI and export
bundles write them) go to the URL as ``<prefix>_<field>`` and come back through
``request_from_json``. URL values are strings: each is read as its field's type (lists as repeated
parameters); a value the request cannot take (not a number, out of range, not among the choices)
falls back to the default, silently. The form's widgets use the same names as keys, so a link
fills the form and the form fills the link.

    form = ui.RequestForm("ll", LogitLensRequest("The capital of France is", " Paris"))
    with form.box("logit_lens_form", "Run logit lens"):
        st.text_area("Prompt", key=form.key("prompt"))
    result = form.run(ANALYSIS, "Enter a prompt and press **Run logit lens**.")  # clicked, linked or kept
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import typing
from collections.abc import Collection, Iterator, Mapping

import streamlit as st

from workbench.analyses import request_from_json, request_json
from workbench.errors import WorkbenchError

TRUE, FALSE = ("1", "true", "True"), ("0", "false", "False")
SCALARS = (str, int, float, bool)


class RequestForm:
    """The widgets, session state and URL of one request on a page.

    ``prefix`` names the page's widgets and URL parameters; ``default`` is the request a fresh
    page shows. ``names`` gives a field a shorter name (kept from older links), ``bounds`` and
    ``choices`` are the widgets' limits where they are narrower than the request's own checks,
    ``lines`` are tuple fields edited one item per line in a text area, and ``skip`` are fields
    left out of the form and the link (the request keeps the default's value).
    """

    def __init__(self, prefix: str, default, *, names: Mapping[str, str] | None = None,
                 bounds: Mapping[str, tuple] | None = None, choices: Mapping[str, Collection] | None = None,
                 lines: Collection[str] = (), skip: Collection[str] = (), state: str = "request"):
        self.prefix, self.default = prefix, default
        self.names, self.bounds, self.choices = dict(names or {}), dict(bounds or {}), dict(choices or {})
        self.lines = frozenset(lines)
        self.hints = typing.get_type_hints(type(default))
        self.fields = [f.name for f in dataclasses.fields(default)
                       if f.name not in skip and _linkable(self.hints[f.name])]
        self.state_key = f"{prefix}_{state}"
        self.submitted = False  # set by ``box``: its button was pressed in this run
        self.fresh = False  # set by ``submit``: this run kept a new request (a click or a link)
        self.linked = self._from_link()
        self._seed(self.request or self.linked or default)

    def key(self, field: str) -> str:
        """The widget key and URL parameter of ``field``."""
        return f"{self.prefix}_{self.names.get(field, field)}"

    @property
    def request(self):
        """The request kept for this page in this session (None before the first run)."""
        return st.session_state.get(self.state_key)

    # ------------------------------------------------------------------ form

    def from_widgets(self, **overrides):
        """The request the widgets show now (fields without a widget as on display), with
        ``overrides``; raises the request's own error for a value it refuses."""
        base = self.request or self.linked or self.default
        values = {field: self._typed(field, st.session_state[self.key(field)])
                  for field in self.fields if self.key(field) in st.session_state}
        return dataclasses.replace(base, **{**values, **overrides})

    @contextlib.contextmanager
    def box(self, name: str, button: str) -> Iterator[None]:
        """An ``st.form`` called ``name`` for the widgets drawn inside, closed by the submit ``button``."""
        with st.form(name):
            yield
            self.submitted = st.form_submit_button(button, type="primary")

    def submit(self, submitted: bool | None = None, **overrides):
        """The request to show: built from the widgets when ``submitted`` (by default: the box's
        button was pressed; a refused request is an error message and nothing is shown), a shared
        link's on the page's first run in a session, else the one kept from before; ``overrides``
        set fields the form does not hold. The shown request is kept and written to the URL."""
        from ui import guarded

        submitted = self.submitted if submitted is None else submitted
        self.fresh = submitted or self.linked is not None
        if submitted:
            st.session_state[self.state_key] = guarded(lambda: self.from_widgets(**overrides))
        elif self.linked is not None:
            st.session_state[self.state_key] = guarded(lambda: dataclasses.replace(self.linked, **overrides))
        if self.request is not None:
            self.share(self.request)
        return self.request

    def run(self, analysis, hint: str, on_partial=None, **overrides):
        """``analysis`` on the request to show (see ``submit``) under a progress box: its result, or
        None after showing why (``hint`` says what to do when there is no request yet).
        ``on_partial(result)`` draws the partial results of an analysis that reports them."""
        from ui import run

        request = self.submit(**overrides)
        if request is None:
            st.info(hint)
            return None
        return run(analysis, request, on_partial=on_partial)

    # ------------------------------------------------------------------ URL

    def url_params(self, request) -> dict[str, str | list[str]]:
        """The request's JSON fields as URL parameters (lists as repeated parameters)."""
        data = json.loads(request_json(request))
        return {self.key(field): _url_text(data[field]) for field in self.fields}

    def share(self, request) -> None:
        """Write ``request`` into the URL (next to the model), so the address reproduces the view."""
        for name, value in self.url_params(request).items():
            wanted = value if isinstance(value, list) else [value]
            if st.query_params.get_all(name) == wanted:
                continue
            if wanted:
                st.query_params[name] = value
            else:  # an empty list: no parameter
                del st.query_params[name]

    def _from_link(self):
        """The request a shared link carries, once per session (None without one)."""
        flag = f"_linked_{self.state_key}"
        if flag in st.session_state:
            return None
        st.session_state[flag] = True
        present = [f for f in self.fields if self.key(f) in st.query_params]
        if not present:
            return None
        data = json.loads(request_json(self.default))
        for field in present:  # one at a time: a value the request refuses keeps the default
            try:
                value = self._url_value(field)
                request_from_json(type(self.default), {**data, field: value})
            except (ValueError, WorkbenchError):
                continue
            data[field] = value
        return request_from_json(type(self.default), data)

    def _url_value(self, field: str):
        """The JSON value of ``field`` from its URL text; ValueError when it is not one."""
        hint, name = self.hints[field], self.key(field)
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            value = [_scalar(item, text) for text in st.query_params.get_all(name)]
        else:
            value = _scalar(hint, st.query_params[name])
        self._check_limits(field, value)
        return value

    def _check_limits(self, field: str, value) -> None:
        items = value if isinstance(value, list) else [value]
        if field in self.choices and not all(v in self.choices[field] for v in items):
            raise ValueError(f"{field}: not among the choices")
        if field in self.bounds and not all(self.bounds[field][0] <= v <= self.bounds[field][1] for v in items):
            raise ValueError(f"{field}: out of bounds")

    # ------------------------------------------------------------------ widgets

    def _seed(self, request) -> None:
        """Give each field's widget the request's value, unless it already has one this run."""
        for field in self.fields:
            key = self.key(field)
            if key not in st.session_state:
                value = getattr(request, field)
                if isinstance(value, tuple):
                    value = "\n".join(map(str, value)) if field in self.lines else list(value)
                st.session_state[key] = value

    def _typed(self, field: str, value):
        """A widget's value as the field's type (number inputs give floats, text areas text)."""
        hint = self.hints[field]
        if typing.get_origin(hint) is tuple:
            if field in self.lines:
                return tuple(line for line in str(value).splitlines() if line.strip())
            return tuple(value)
        return hint(value) if hint in SCALARS else value


def _linkable(hint) -> bool:
    """Fields a URL can hold: scalars and tuples of scalars (nested requests are left out)."""
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0] in SCALARS
    return hint in SCALARS


def _scalar(hint, text: str):
    """URL text as a JSON scalar of type ``hint``; ValueError when it is not one."""
    if hint is bool:
        if text not in TRUE + FALSE:
            raise ValueError(f"not a yes/no value: {text!r}")
        return text in TRUE
    return hint(text)


def _url_text(value) -> str | list[str]:
    """A JSON value as URL text: text as it is, numbers and true/false as JSON writes them."""
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return value if isinstance(value, str) else json.dumps(value)
