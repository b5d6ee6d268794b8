"""Full-page headless-Chromium screenshots of every page, run with its default request, per model.

Run with ``.venv/bin/python -m tools.screenshots --out shots/`` (models: both bundled ones by
default). A throwaway result cache is used, the converted models are shared. For every page the
script opens it for the model, presses the page's run buttons (tab by tab), waits until the app is
idle, and saves ``<out>/<model>-<page>[-<tab>].png``; it prints any page that shows an exception
or an error box, so a broken page is not only visible in the picture. This is a developer tool
for looking at what was built (see the developers' guide), not a test.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, IDLE, streamlit_server

# page url path -> [(tab label or "", button names pressed in order)]
PAGES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "": [("", ())],
    "logit_lens": [("", ("Run logit lens",))],
    "attention_sinks": [("One prompt", ("Run sink probe",)),
                        ("Sink levels over a prompt set", ("Run over the prompt set",))],
    "lens_comparison": [("", ("Compare lenses",))],
    "tuned_lens": [("", ("Fit and compare", "Fit and evaluate"))],
    "future_lens": [("", ("Fit and score",))],
    "patchscope": [("", ("Run Patchscope",))],
    "decoder_lens": [("", ())],  # the bundled models are decoder-only: the page says what it needs
    # a small task (the default, 20 pairs x 3 methods, takes minutes on a CPU); a link runs its request
    "circuits?ci_pairs=4&ci_methods=atp&ci_methods=relp": [("", ())],
    "latent_language": [("", ("Run latent-language view",))],
    "depth_use": [("", ("Run depth analysis",))],
    "neurons": [("", ("Classify all neurons", "Explore neuron"))],
    "patching": [("One prompt pair", ("Run patching",))],
    "concept_depth": [("", ("Run probes",))],
    "compare": [("", ("Compare",))],
}


def settle(page, timeout: float) -> bool:
    """Wait until the app stays idle for three seconds (a form submit can rerun the script, and
    the app is idle for a moment between the two runs); False if it is still running at the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            page.wait_for_selector(IDLE, timeout=max(1.0, deadline - time.monotonic()) * 1000)
        except Exception:  # playwright's TimeoutError: still running
            return False
        page.wait_for_timeout(3000)
        if page.locator(IDLE).count():
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("shots"))
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--pages", nargs="*", default=list(PAGES), help="url paths ('' is home)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a page may run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # a stopped run (kill, Ctrl-C) unwinds through the server's context manager, which stops the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as cache, streamlit_server(Path(cache), Path(cache) / "server.log") as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for model in args.models:
            for path in args.pages:
                for tab, buttons in PAGES[path]:
                    page.goto(f"{url}/{path}{'&' if '?' in path else '?'}model={model}")
                    page.wait_for_selector(IDLE, timeout=args.timeout * 1000)  # a link runs its request at once
                    if tab:
                        page.get_by_role("tab", name=tab).click()
                    finished = True
                    for button in buttons:
                        page.get_by_role("button", name=button).first.click()
                        finished = finished and settle(page, args.timeout)
                    page.wait_for_timeout(1500)  # plotly draws after the script ends
                    # the app scrolls inside its main block, not the document: grow the window to it
                    height = page.evaluate("Math.max(...[...document.querySelectorAll("
                                           "'[data-testid=stMain], [data-testid=stMainBlockContainer]')]"
                                           ".map(e => e.scrollHeight), 1000)")
                    page.set_viewport_size({"width": 1400, "height": min(int(height) + 80, 16000)})
                    page.wait_for_timeout(1500)
                    where = path.split("?")[0] or "home"
                    name = "-".join(p for p in (model, where, tab.split()[0].lower() if tab else "",
                                                "" if finished else "STILL-RUNNING") if p)
                    page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                    problems = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
                    note = f"  PROBLEM: {problems.first.inner_text()[:200]!r}" if problems.count() else ""
                    print(f"{name}.png{note}", flush=True)
                    page.set_viewport_size({"width": 1400, "height": 1000})
        browser.close()


if __name__ == "__main__":
    main()
