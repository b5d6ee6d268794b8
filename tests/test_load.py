"""Load test: several browser sessions on one real server, every answer checked against the backend.

A Streamlit server on a throwaway cache; four browser contexts (one Chromium, async playwright)
each run the logit lens at the same time on a different prompt, on the same tiny model directory
picked through the sidebar's "Other" entry; each heatmap is read back from the page and compared
with the backend's own result. Then one session runs a long job (the IOI faithfulness scoreboard)
while another reopens a cached logit lens, which must come back well before the long job ends.

Then eight sessions open shared logit-lens links on the real default model (smollm2-135m) at
once, eight different prompts: the server gathers them into batched forwards, and every heatmap
must equal the backend's own single, unbatched run of its prompt. The same eight prompts from eight
threads on one backend must run as one batched forward, each full result equal to its single run.
Every test here is ``slow``; the ones that drive Chromium are also ``browser``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, IDLE, streamlit_server
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import PROJECT_ROOT, Settings
from workbench.figures import display_token
from workbench.figures.axes import cell_chars, shorten
from workbench.figures.logit_lens import cell_labels
from workbench.service import Workbench

pytestmark = [pytest.mark.slow]
RUNNING = '[data-testid="stApp"][data-test-script-state="running"]'
CHART = '[data-testid="stPlotlyChart"]'
TARGET = " Paris"
PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "Alice and Bob walked to the park",
    "One two three four five six",
]
# The heatmap's data as the browser holds it (plotly decodes typed arrays; nested ones are converted).
READ_HEATMAP = """el => {
  const gd = el.querySelector('.js-plotly-plot');
  const plain = v => ArrayBuffer.isView(v) ? Array.from(v) : Array.isArray(v) ? v.map(plain) : v;
  const trace = gd._fullData[0];
  return {title: gd.layout.title.text, text: plain(trace.text), z: plain(trace.z)};
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    extra = {"LAYERLENS_THREADS": os.environ.get("LAYERLENS_THREADS", "1")}
    with streamlit_server(tmp_path_factory.mktemp("load_cache"), tmp_path_factory.mktemp("load_log") / "server.log",
                          extra) as url:
        yield url


@pytest.fixture(scope="module")
def expected(tiny_dirs, tmp_path_factory):
    """The backend's own logit lens for each prompt (its own cache, not the server's)."""
    backend = Workbench(Settings(cache_dir=tmp_path_factory.mktemp("direct_cache")))
    try:
        return {p: backend.logit_lens(str(tiny_dirs["llama"]), LogitLensRequest(p, TARGET, 5)) for p in PROMPTS}
    finally:
        backend.close()


def _lens_url(server: str, model: str, prompt: str | None = None) -> str:
    params = {"model": model}
    if prompt is not None:  # a shared link: the page runs the request itself
        params.update(ll_prompt=prompt, ll_target=TARGET, ll_top_k="5")
    return f"{server}/logit_lens?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}"


def _check_heatmap(shown: dict, result, atol: float = 1e-6, ties: bool = False) -> None:
    """Every cell of the page's heatmap is the backend's top-1 token and probability (to ``atol``).

    With ``ties`` (the page's result came from a batched forward, which differs from a single one
    by float rounding), two tokens within ``atol`` of each other can swap places: a cell may then
    show the backend's second token, but only if that token's probability is within ``atol`` of the
    first's. Without it every cell's token must be exactly the backend's."""
    assert re.sub(r"<[^>]+>", "", shown["title"]) == f"Logit lens: {result.model_name}"  # the page may bold it
    expected_text = cell_labels(result)  # display_token of each top-1 token, cut with '…' to its cell
    text = np.array(shown["text"], dtype=object)
    assert text.shape == expected_text.shape
    width = cell_chars(text.shape[1])
    second = np.vectorize(lambda t: shorten(display_token(t), width), otypes=[object])(result.top_tokens[:, :, 1])
    for slot, pos in zip(*np.nonzero(text != expected_text), strict=True):
        tie = result.top_probs[slot, pos, 0] - result.top_probs[slot, pos, 1]
        assert ties and text[slot, pos] == second[slot, pos] and tie <= atol, (slot, pos, text[slot, pos], tie)
    np.testing.assert_allclose(np.array(shown["z"], dtype=float), result.top_probs[:, :, 0], rtol=0, atol=atol)


async def _run_lens_in_form(context, server: str, model: str, prompt: str) -> tuple[dict, float]:
    """One session: open the page on ``model`` (sidebar 'Other'), type ``prompt``, run, read the heatmap."""
    page = await context.new_page()
    await page.goto(_lens_url(server, model))
    custom = page.get_by_label("Model directory or hub id")  # shown only for the sidebar's 'Other' entry
    await custom.wait_for(state="visible", timeout=60_000)
    await page.wait_for_selector(IDLE, timeout=60_000)
    assert await custom.input_value() == model
    await page.get_by_label("Prompt").fill(prompt)
    started = time.monotonic()
    await page.get_by_role("button", name="Run logit lens").click()
    chart = page.locator(CHART).first
    await chart.wait_for(state="visible", timeout=60_000)
    await page.wait_for_selector(IDLE, timeout=60_000)
    seconds = time.monotonic() - started
    assert await page.locator('[data-testid="stException"]').count() == 0
    assert await page.locator('[data-testid="stAlert"]').filter(has_text="rror").count() == 0
    return await chart.evaluate(READ_HEATMAP), seconds


async def _long_scoreboard(context, server: str, model: str, started: asyncio.Event) -> float:
    """The faithfulness scoreboard over many IOI pairs: every pair activation-patched at every site."""
    page = await context.new_page()
    await page.goto(f"{server}/patching?{urllib.parse.urlencode({'model': model})}")
    await page.wait_for_selector(IDLE, timeout=60_000)
    await page.get_by_role("tab", name="Faithfulness scoreboard").click()
    await page.get_by_label("IOI pairs").fill("100")
    await page.get_by_label("Seed").fill("7")
    await page.get_by_label("Seed").press("Tab")
    begin = time.monotonic()
    await page.get_by_role("button", name="Run scoreboard").click()
    await page.wait_for_selector(RUNNING, timeout=30_000)
    await page.get_by_text(re.compile(r"Pair \d+ of 100")).first.wait_for(timeout=60_000)  # under way
    started.set()
    await page.locator(CHART).first.wait_for(state="visible", timeout=120_000)
    await page.wait_for_selector(IDLE, timeout=120_000)
    assert await page.locator('[data-testid="stException"]').count() == 0
    return time.monotonic() - begin


async def _cached_read(context, server: str, model: str, prompt: str, started: asyncio.Event) -> tuple[dict, float]:
    await started.wait()
    page = await context.new_page()
    begin = time.monotonic()
    await page.goto(_lens_url(server, model, prompt))  # a shared link: the page re-runs the cached request
    chart = page.locator(CHART).first
    await chart.wait_for(state="visible", timeout=60_000)
    await page.wait_for_selector(IDLE, timeout=60_000)
    return await chart.evaluate(READ_HEATMAP), time.monotonic() - begin


async def _load_scenario(server: str, model: str) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            contexts = [await browser.new_context(viewport={"width": 1300, "height": 900}) for _ in PROMPTS]
            lens = await asyncio.gather(*(_run_lens_in_form(c, server, model, p)
                                          for c, p in zip(contexts, PROMPTS, strict=True)))
            started = asyncio.Event()
            long_seconds, (reread, read_seconds) = await asyncio.gather(
                _long_scoreboard(contexts[0], server, model, started),
                _cached_read(contexts[1], server, model, PROMPTS[0], started),
            )
            return {"lens": lens, "long_seconds": long_seconds, "reread": reread, "read_seconds": read_seconds}
        finally:
            await browser.close()


@pytest.mark.browser
def test_concurrent_sessions_answers_and_cached_reads_during_a_long_job(server, tiny_dirs, expected):
    assert os.path.exists(CHROMIUM), "Debian chromium is required for browser tests: apt-get install chromium"
    model = str(tiny_dirs["llama"])
    outcome = asyncio.run(_load_scenario(server, model))
    long_seconds, read_seconds = outcome["long_seconds"], outcome["read_seconds"]
    print(f"long job {long_seconds:.1f} s; cached read during it {read_seconds:.2f} s; "
          f"concurrent lens runs {[round(s, 1) for _, s in outcome['lens']]} s")
    for prompt, (shown, _seconds) in zip(PROMPTS, outcome["lens"], strict=True):
        _check_heatmap(shown, expected[prompt])  # four sessions at once, each got its own prompt's answer
    _check_heatmap(outcome["reread"], expected[PROMPTS[0]])
    assert read_seconds < 0.5 * long_seconds, (read_seconds, long_seconds)  # not queued behind the long job


# ------------------------------------------------------------------------------ eight sessions, real model

REAL_MODEL = "smollm2-135m"  # the catalog's default model
REAL_PROMPTS = [
    "The capital of France is",
    "The capital of Italy is",
    "The largest planet is",
    "The author of Hamlet is",
    "The currency of Japan is the",
    "When Mary and John went to the store, John gave a drink to",
    "The opposite of hot is",
    "One two three four five six",
]


@pytest.fixture(scope="module")
def expected_real(tmp_path_factory):
    """The backend's own single runs on the real model: batching off, one prompt at a time."""
    settings = Settings(cache_dir=tmp_path_factory.mktemp("direct_real"), models_dir_override=PROJECT_ROOT / "cache"
                        / "models", batch_window_ms=0, threads=int(os.environ.get("LAYERLENS_THREADS", "1")))
    backend = Workbench(settings)
    try:
        return {p: backend.logit_lens(REAL_MODEL, LogitLensRequest(p, TARGET, 5)) for p in REAL_PROMPTS}
    finally:
        backend.close()


async def _open_shared_link(context, server: str, model: str, prompt: str) -> tuple[dict, float]:
    """One session opens a shared logit-lens link (the page runs the request) and reads its heatmap."""
    page = await context.new_page()
    begin = time.monotonic()
    await page.goto(_lens_url(server, model, prompt))
    chart = page.locator(CHART).first
    await chart.wait_for(state="visible", timeout=300_000)
    await page.wait_for_selector(IDLE, timeout=300_000)
    seconds = time.monotonic() - begin
    assert await page.locator('[data-testid="stException"]').count() == 0
    assert await page.locator('[data-testid="stAlert"]').filter(has_text="rror").count() == 0
    return await chart.evaluate(READ_HEATMAP), seconds


async def _eight_sessions(server: str) -> list:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            contexts = [await browser.new_context(viewport={"width": 1300, "height": 900}) for _ in REAL_PROMPTS]
            return await asyncio.gather(*(_open_shared_link(c, server, REAL_MODEL, p)
                                          for c, p in zip(contexts, REAL_PROMPTS, strict=True)))
        finally:
            await browser.close()


@pytest.mark.browser
def test_eight_sessions_on_the_real_model_each_get_their_single_run(server, expected_real):
    assert os.path.exists(CHROMIUM), "Debian chromium is required for browser tests: apt-get install chromium"
    outcome = asyncio.run(_eight_sessions(server))
    print(f"eight sessions on {REAL_MODEL}: {[round(s, 1) for _, s in outcome]} s")
    for prompt, (shown, _seconds) in zip(REAL_PROMPTS, outcome, strict=True):
        # its own prompt's answer, equal to the single run (a batched forward: to float tolerance)
        _check_heatmap(shown, expected_real[prompt], atol=1e-5, ties=True)


def test_eight_backend_sessions_on_the_real_model_share_one_forward(expected_real, tmp_path):
    """Eight threads on one ``Workbench`` (what eight sessions of one server share), released together."""
    import threading

    from tests.test_concurrency import assert_same_lens

    settings = Settings(cache_dir=tmp_path / "cache", models_dir_override=PROJECT_ROOT / "cache" / "models",
                        batch_window_ms=30_000, batch_max=len(REAL_PROMPTS),  # closes when all eight are in
                        threads=int(os.environ.get("LAYERLENS_THREADS", "1")))
    wb = Workbench(settings)
    try:
        model = wb.model(REAL_MODEL)
        shapes: list = []
        handle = model.hf_model.get_input_embeddings().register_forward_hook(
            lambda _module, args, _out: shapes.append(tuple(args[0].shape)))
        start = threading.Barrier(len(REAL_PROMPTS))
        results: dict = {}

        def session(prompt: str) -> None:
            start.wait()
            results[prompt] = wb.logit_lens(REAL_MODEL, LogitLensRequest(prompt, TARGET, 5))

        threads = [threading.Thread(target=session, args=(p,)) for p in REAL_PROMPTS]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)
        finally:
            handle.remove()
        assert sorted(results) == sorted(REAL_PROMPTS)
        assert len(shapes) == 1 and shapes[0][0] == len(REAL_PROMPTS)  # one forward, eight rows
        for prompt in REAL_PROMPTS:
            assert_same_lens(results[prompt], expected_real[prompt])
    finally:
        wb.close()
