"""The shape every analysis has: ``Analysis``, and the one JSON round trip of its requests.

An analysis is a module ``workbench/analyses/<name>.py`` holding a frozen request, a frozen
result (numpy arrays and scalars, shapes checked in ``__post_init__``), the math, and one
``ANALYSIS = Analysis(...)`` naming them. ``name`` is the module's file name, its cache key and
its CLI name; ``version`` is bumped whenever its numbers or its stored layout could change, so
cached results of older versions are recomputed rather than misread.

``run(ctx, request, progress)`` computes a result on the model that ``ctx`` (a
``workbench.runtime.Context``) holds; it never looks up or writes the result cache itself (the
runtime does), but may ask ``ctx`` for cached activation sets and for other analyses' results.
``run_batch(ctx, requests, progress)``, optional, computes several requests on the model in one
batched pass and returns one entry per request, in order: its result, or the exception that request
alone raised (e.g. a target that is not one token); the runtime gathers concurrent requests of
the same model and analysis into one such call and hands each caller its own entry (results must
equal ``run``'s to float tolerance). ``check(request, settings)`` refuses bad input before any
model is touched. Figures live in ``workbench/figures/<name>.py`` as ``FIGURES = {figure name:
result -> plotly figure}``, found by name, so no analysis imports plotly. ``summary(result)``
places per-layer numbers on normalised depth (``workbench.axes``); ``compare_request(inputs)``
builds the request the compare page runs on both models. ``encoder_decoder`` marks an analysis that reads
encoder-decoder models (T5, BART) through ``ctx.encoder_decoder_model`` and refuses decoder-only ones
(the DecoderLens); every other analysis reads ``ctx.model``, which refuses encoder-decoder models.

The request JSON (``request_json`` / ``request_from_json``) is the one serialisation used for
cache keys, export manifests, the CLI and shareable links.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from workbench.errors import BadRequest

Progress = Callable[[float | None, str], None]


def silent(_fraction: float | None, _message: str) -> None:
    """A progress callback that reports nowhere."""
    return None


@dataclass(frozen=True)
class CompareInputs:
    """What the compare page asks once for every analysis it runs on two models."""

    prompt: str = "The capital of France is"
    target: str = " Paris"
    task: str = "factual"  # a bundled concept-depth task
    limit: int = 100  # concept-depth texts


@dataclass(frozen=True)
class Analysis:
    """One analysis as every part of the workbench sees it (see the module docstring)."""

    name: str
    version: int
    title: str
    Request: type  # noqa: N815 (a type, named as the issue and the notebooks spell it)
    Result: type  # noqa: N815
    run: Callable  # (ctx, request, progress) -> Result
    check: Callable | None = None  # (request, settings) -> None; raises WorkbenchError
    summary: Callable | None = None  # Result -> list[axes.LayerSummary]
    compare_request: Callable | None = None  # CompareInputs -> Request
    compare_figure: str = ""  # the figure the compare page shows side by side
    compare_note: str = ""  # e.g. "slow on CPU", shown next to the title on the compare page
    expand_fields: Callable | None = None  # JSON fields -> request fields (e.g. a named bundled task)
    run_batch: Callable | None = None  # (ctx, [request], progress) -> [Result | Exception], see above
    encoder_decoder: bool = False  # runs on encoder-decoder models (ctx.encoder_decoder_model), not decoder-only ones

    @property
    def figures(self) -> Mapping[str, Callable]:
        """The named figures of a result, from ``workbench/figures/<name>.py``."""
        return importlib.import_module(f"workbench.figures.{self.name}").FIGURES

    def figure(self, name: str, result):
        if name not in self.figures:
            raise BadRequest(f"{self.name} has no figure {name!r}. Figures: {', '.join(self.figures)}.")
        return self.figures[name](result)

    def request(self, data: dict):
        """The request from its JSON fields."""
        if self.expand_fields is not None and isinstance(data, dict):
            data = self.expand_fields(data)
        return request_from_json(self.Request, data)

    def check_request(self, request, settings) -> None:
        """The request is of this analysis's type and passes its model-free checks."""
        if not isinstance(request, self.Request):
            raise BadRequest(f"{self.name} takes a {self.Request.__name__}, not {type(request).__name__}.")
        if self.check is not None:
            self.check(request, settings)


# ------------------------------------------------------------------------------ request JSON


def request_json(request) -> str:
    """Canonical JSON of a request dataclass (sorted keys), stored next to its result."""
    return json.dumps(asdict(request), sort_keys=True)


def request_digest(request) -> str:
    """Content digest of a request: equal requests, equal digests, in every process."""
    return hashlib.sha256(f"{type(request).__name__}:{request_json(request)}".encode()).hexdigest()


def request_from_json(request_type: type, data: dict):
    """Rebuild a frozen request dataclass from its ``request_json`` form (lists back to tuples)."""
    if not isinstance(data, dict):
        raise BadRequest(f"A {request_type.__name__} is a JSON object, not {type(data).__name__}.")
    hints = typing.get_type_hints(request_type)
    names = {f.name for f in dataclasses.fields(request_type)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BadRequest(f"{request_type.__name__} has no field(s) {', '.join(unknown)}. "
                         f"Fields: {', '.join(sorted(names))}.")
    values = {key: _convert(hints[key], value, f"{request_type.__name__}.{key}") for key, value in data.items()}
    try:
        return request_type(**values)
    except (TypeError, ValueError) as exc:  # a required field is missing, or a value the request rejects
        raise BadRequest(f"{request_type.__name__}: {exc}") from None


JSON_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _convert(hint, value, where: str):
    """``value`` (parsed JSON) as the annotated type: nested requests rebuilt, lists to tuples, and
    a clear error for the wrong kind of value (JSON true is not an int, "5" is not a number)."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise BadRequest(f"{where} is a JSON object, not {json.dumps(value)[:40]}.")
        return request_from_json(hint, value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise BadRequest(f"{where} is a list, not {json.dumps(value)[:40]}.")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    accepted = JSON_TYPES.get(hint)
    if accepted and (not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool))):
        raise BadRequest(f"{where} must be {hint.__name__}, not {json.dumps(value)[:40]}.")
    return value
