"""Benchmark: exporting a figure with the long-lived export browser vs a one-shot export.

Run with ``make bench`` (or ``.venv/bin/python -m bench.bench_export``). Prints median wall times
and their ratios, all measured in this one run, for the logit-lens heatmap of the default model
at the double-column size:

* first export      SVG + PNG + PDF of a new ImageExporter: starts its Chromium, then renders
* warm export       SVG + PNG + PDF again on the same exporter (what every export after the first costs)
* warm SVG          one SVG on the warm exporter
* bundle            a whole bundle after the first (figure from the cache, data, manifest, 3 images)
* one-shot SVG      kaleido's ``calc_fig_sync`` without a server: a new browser per image
* forward           one plain forward pass of the prompt, for scale
"""

from __future__ import annotations

import argparse
import time

import kaleido

from bench.common import median_seconds, throwaway_workbench
from workbench import export, prompts, tracing
from workbench.analyses.logit_lens import LogitLensRequest

PROMPT = "The capital of France is"


def render_all(exporter: export.ImageExporter, figure, style) -> None:
    for fmt in export.FORMATS:
        exporter.render(figure, fmt, style)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if export.find_browser() is None:
        raise SystemExit(export.NO_BROWSER)

    style = export.paper_style(export.DEFAULT_STYLE)
    spec = export.spec_of("logit_lens", "heatmap", args.model, LogitLensRequest(PROMPT, " Paris"))
    with throwaway_workbench() as wb:
        figure = export.styled(export.build_figure(wb, spec), style)  # computes and caches the analysis
        model = wb.model(args.model)
        ids = prompts.encode(model, PROMPT, wb.settings).ids
        times = {"forward": median_seconds(lambda: tracing.forward_logits(model, ids), args.repeats)}

        exporter = export.ImageExporter()
        start = time.perf_counter()
        render_all(exporter, figure, style)
        times["first export"] = time.perf_counter() - start
        times["warm export"] = median_seconds(lambda: render_all(exporter, figure, style), args.repeats)
        times["warm SVG"] = median_seconds(lambda: exporter.render(figure, "svg", style), args.repeats)
        times["bundle"] = median_seconds(
            lambda: export.make_bundle(wb, spec, style, export.FORMATS, exporter), args.repeats)
        exporter.close()
        opts = {"format": "svg", "width": style.width_px, "height": style.height_px}
        times["one-shot SVG"] = median_seconds(
            lambda: kaleido.calc_fig_sync(figure.to_dict(), opts=opts, kopts={"mathjax": False}), 2)

    print(f"model {args.model}, logit-lens heatmap of a {len(ids)}-token prompt, {style.name} "
          f"({style.width_in:g} x {style.height_in:g} in)")
    print(f"{'step':<14} {'seconds':>9}")
    for name, seconds in times.items():
        print(f"{name:<14} {seconds:9.3f}")
    print(f"first export / warm export = {times['first export'] / times['warm export']:.1f}")
    print(f"one-shot SVG / warm SVG    = {times['one-shot SVG'] / times['warm SVG']:.1f}")
    print(f"warm export / forward      = {times['warm export'] / times['forward']:.1f}")
    print(f"bundle / warm export       = {times['bundle'] / times['warm export']:.2f}")


if __name__ == "__main__":
    main()
