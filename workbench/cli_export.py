"""The CLI's analysis commands: ``list``, ``run`` (an analysis -> an export bundle, no UI) and
``regenerate`` (a bundle -> the same figure again, checked).

    python -m workbench list
    python -m workbench run logit_lens --model smollm2-135m --prompt "The capital of France is" \\
        --request '{"target": " Paris"}' --figure heatmap --format svg --format pdf --out exports/paris
    python -m workbench regenerate exports/paris

``regenerate`` exits 0 when the figure comes out identical, 1 when it differs, 2 on bad input (a
bundle that is not one, a malformed manifest, files over the size caps, a model a bundle may not
name: one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from workbench import export, registry
from workbench.analyses import request_digest, request_json
from workbench.errors import BadRequest
from workbench.models import catalog


def add_list_command(subparsers) -> None:
    parser = subparsers.add_parser("list", help="analyses, their figures and request fields")
    parser.set_defaults(handler=_list)


def add_run_command(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run an analysis and write its export bundle")
    parser.add_argument("analysis", help="an analysis name (see `list`)")
    parser.add_argument("--model", default=catalog.DEFAULT_MODEL, help="catalog name, model directory or hub id")
    parser.add_argument("--request", default="{}", help="the request's fields as a JSON object, or @file.json")
    parser.add_argument("--prompt", help="shortcut: sets the request's 'prompt' field")
    parser.add_argument("--figure", help="which figure (default: the analysis's first)")
    parser.add_argument("--size", default=export.DEFAULT_STYLE, choices=list(export.PAPER_STYLES))
    parser.add_argument("--format", action="append", choices=[*export.FORMATS, "none"],
                        help="image format, repeatable (default: svg, png and pdf; 'none' for data only)")
    parser.add_argument("--out", type=Path,
                        help="bundle directory (default: exports/<analysis>-<figure>-<model>-<request id>)")
    parser.add_argument("--zip", action="store_true", help="write one .zip instead of a directory")
    parser.set_defaults(handler=_run)


def add_regenerate_command(subparsers) -> None:
    parser = subparsers.add_parser("regenerate", help="rebuild a bundle's figure from its manifest and compare",
                                   epilog="exit codes: 0 identical figure, 1 the figure differs, 2 bad input")
    parser.add_argument("bundle", type=Path, help="a bundle directory or .zip")
    parser.add_argument("--out", type=Path, help="where to write the regenerated bundle (default: BUNDLE-regenerated)")
    parser.add_argument("--format", action="append", choices=[*export.FORMATS, "none"],
                        help="image formats (default: those in the bundle)")
    parser.set_defaults(handler=_regenerate)


def _list(_args) -> int:
    for name, entry in registry.ENTRIES.items():
        print(f"{name}: {entry.title}")
        print(f"  figures: {', '.join(entry.figures)}")
        fields = []
        for f in dataclasses.fields(entry.Request):
            if f.default is not dataclasses.MISSING:
                fields.append(f"{f.name}={f.default!r}")
            elif f.default_factory is not dataclasses.MISSING:  # a nested request: its JSON fields
                fields.append(f"{f.name}={json.loads(request_json(f.default_factory()))}")
            else:
                fields.append(f"{f.name} (required)")
        print(f"  request: {', '.join(fields)}")
    return 0


def _request_fields(args) -> dict:
    text = args.request
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise BadRequest(f"Cannot read the request file {text[1:]}: {exc.strerror}.") from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"--request is not valid JSON: {exc}.") from None
    if not isinstance(fields, dict):
        raise BadRequest("--request must be a JSON object, e.g. '{\"prompt\": \"The capital of France is\"}'.")
    if args.prompt is not None:
        fields["prompt"] = args.prompt
    return fields


def _formats(chosen: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if not chosen:
        return default
    return () if "none" in chosen else tuple(dict.fromkeys(chosen))


def _progress(fraction: float | None, message: str) -> None:
    share = "" if fraction is None else f" ({fraction:.0%})"
    print(f"  {message}{share}", file=sys.stderr)


def _workbench():
    from workbench.service import Workbench  # loads torch: only for the commands that need it

    return Workbench()


def _run(args) -> int:
    entry = registry.entry(args.analysis)
    request = entry.request(_request_fields(args))
    figure = args.figure or next(iter(entry.figures))
    if figure not in entry.figures:
        raise BadRequest(f"{entry.name} has no figure {figure!r}. Figures: {', '.join(entry.figures)}.")
    spec = export.FigureSpec(f"{entry.name}:{figure}", (export.FigureSource(entry.name, args.model, request),))
    model_slug = export.slug(Path(args.model).name or args.model, "model")
    out = args.out or Path("exports") / f"{entry.name}-{figure}-{model_slug}-{request_digest(request)[:10]}"
    workbench = _workbench()
    try:
        bundle = export.make_bundle(workbench, spec, export.paper_style(args.size),
                                    _formats(args.format, export.FORMATS), progress=_progress)
    finally:
        workbench.close()
    return _write(bundle, out, args.zip)


def _write(bundle: export.Bundle, out: Path, as_zip: bool) -> int:
    if as_zip:
        target = out if out.suffix == ".zip" else out.with_suffix(".zip")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bundle.zip_bytes())
    else:
        target = bundle.write(out)
    print(f"wrote {target} ({', '.join(sorted(bundle.files))})")
    print(f"regenerate with: {export.REGENERATE_COMMAND.format(bundle=target)}")
    return 0


def _regenerate(args) -> int:
    bundle = export.read_bundle(args.bundle)
    default = tuple(f for f in export.FORMATS if f"figure.{f}" in bundle.files)
    workbench = _workbench()
    try:
        regenerated = export.regenerate(workbench, bundle, _formats(args.format, default), progress=_progress)
    finally:
        workbench.close()
    for warning in regenerated.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out = args.out or args.bundle.with_name(args.bundle.stem + "-regenerated")
    _write(regenerated.bundle, out, out.suffix == ".zip")
    print("identical figure: yes" if regenerated.identical else "identical figure: NO (the figure JSON differs)")
    return 0 if regenerated.identical else 1  # see workbench.cli: EXIT_SAME, EXIT_DIFFERS


def register_all(subparsers: argparse._SubParsersAction) -> None:
    for add in (add_list_command, add_run_command, add_regenerate_command):
        add(subparsers)
