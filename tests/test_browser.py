"""A real browser (Debian chromium, driven by playwright) against a real server on the default model."""

from __future__ import annotations

import json
import os

import pytest

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, IDLE, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("browser_cache"),
                          tmp_path_factory.mktemp("log") / "server.log") as url:
        yield url


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian chromium is required for browser tests: apt-get install chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_logit_lens_heatmap_in_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/logit_lens")
    page.wait_for_selector(IDLE, timeout=60_000)
    expect(page.locator('[data-testid="stSidebar"]')).to_contain_text("dequantized", timeout=30_000)
    prompt = page.get_by_label("Prompt")
    prompt.fill("The capital of France is")
    page.get_by_role("button", name="Run logit lens").click()
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    expect(chart).to_be_visible(timeout=240_000)  # first run may convert the GGUF (~30 s)
    page.wait_for_selector(IDLE, timeout=240_000)
    svg_text = " ".join(chart.locator("svg").all_text_contents())
    assert "Logit lens: smollm2-135m" in svg_text
    assert "Paris" in svg_text  # the model's own top token in the last row
    assert page.locator('[data-testid="stException"]').count() == 0


def test_empty_prompt_shows_message_in_browser(server, page):
    from playwright.sync_api import expect

    page.goto(f"{server}/logit_lens")
    page.wait_for_selector(IDLE, timeout=60_000)
    page.get_by_label("Prompt").fill("   ")
    page.get_by_role("button", name="Run logit lens").click()
    expect(page.get_by_text("The prompt is empty")).to_be_visible(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_switch_model_compare_and_download_svg(server, page, tmp_path):
    """Pick Gemma in the sidebar, compare it with SmolLM2, check the overlay, download it as SVG."""
    from playwright.sync_api import expect

    page.goto(f"{server}/compare")
    page.wait_for_selector(IDLE, timeout=60_000)
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="Gemma 3 270M base").click()
    page.wait_for_url("**model=gemma3-270m**", timeout=60_000)  # the rerun for the new model has happened
    page.wait_for_selector(IDLE, timeout=60_000)
    expect(page.get_by_role("combobox", name="Second model")).to_have_value(
        "SmolLM2-135M-Instruct", timeout=30_000)  # moved off the model now in the sidebar
    page.get_by_role("button", name="Compare").click()
    charts = page.locator('[data-testid="stPlotlyChart"]')
    expect(charts).to_have_count(7, timeout=400_000)  # overlay + 3 analyses x 2 models (Gemma may convert first)
    page.wait_for_selector(IDLE, timeout=240_000)
    overlay_text = " ".join(charts.first.locator("svg").all_text_contents())
    assert "gemma3-270m" in overlay_text and "smollm2-135m" in overlay_text
    assert "normalised depth l/L" in overlay_text
    assert "model=gemma3-270m" in page.url and "cmp_b=smollm2-135m" in page.url
    assert page.locator('[data-testid="stException"]').count() == 0

    page.get_by_text("Export figure").first.click()
    with page.expect_download(timeout=120_000) as download_info:
        page.get_by_role("button", name="SVG").first.click()
    download = download_info.value
    assert download.suggested_filename == "compare-overlay.svg"
    svg = (tmp_path / "overlay.svg")
    download.save_as(svg)
    text = svg.read_text()
    assert text.lstrip().startswith("<svg") and "gemma3-270m" in text and "smollm2-135m" in text
    assert f'width="{7 * 96}"' in text  # the default paper size: double column, 7 in
    # the overlay's bundle regenerates the same figure from its manifest
    with page.expect_download(timeout=120_000) as download_info:
        page.get_by_role("button", name="Bundle (.zip)").first.click()
    bundle_path = tmp_path / "overlay.zip"
    download_info.value.save_as(bundle_path)
    import zipfile

    with zipfile.ZipFile(bundle_path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert {"figure.svg", "figure.png", "figure.pdf", "data.csv", "figure.json"} <= set(archive.namelist())
    assert manifest["figure"] == "summary_overlay"
    assert {s["model"] for s in manifest["sources"]} == {"gemma3-270m", "smollm2-135m"}


def test_patching_shows_atp_and_relp_before_activation_patching_finishes(server, page):
    """On the default model, the AtP/RelP maps appear while activation patching is still running
    (its progress box still open), then the final maps replace them."""
    from playwright.sync_api import expect

    page.goto(f"{server}/patching")
    page.wait_for_selector(IDLE, timeout=60_000)
    page.get_by_role("button", name="Run patching").click()
    filling = page.get_by_text("activation patching is filling in")
    expect(filling).to_be_visible(timeout=240_000)
    assert page.locator(IDLE).count() == 0  # the script is still running: activation patching has not finished
    charts = page.locator('[data-testid="stPlotlyChart"]')
    expect(charts.first).to_be_visible(timeout=60_000)
    svg_text = " ".join(charts.first.locator("svg").all_text_contents())
    assert "attribution patching (AtP)" in svg_text and "relevance patching (RelP)" in svg_text
    page.wait_for_selector(IDLE, timeout=600_000)
    expect(filling).to_have_count(0)
    assert charts.count() == 4  # the final maps: resid, attn, mlp, heads
    assert page.locator('[data-testid="stException"]').count() == 0


def test_lens_comparison_rows_are_lenses_in_browser(server, page):
    """On the default model: logit lens, linear shortcut (fitted on first use, then stored) and Patchscope
    side by side, held-out quality and fitting cost drawn, the fitted lens then shown as stored."""
    from playwright.sync_api import expect

    page.goto(f"{server}/lens_comparison?lc_lenses=logit&lc_lenses=linear_shortcut&lc_lenses=patchscope&lc_eval=1")
    page.wait_for_selector(IDLE, timeout=60_000)
    page.get_by_role("button", name="Compare lenses").click()
    charts = page.locator('[data-testid="stPlotlyChart"]')
    expect(charts).to_have_count(3, timeout=400_000)  # grid, held-out, fitting cost
    page.wait_for_selector(IDLE, timeout=240_000)
    grid = " ".join(charts.first.locator("svg").all_text_contents())
    assert "Every lens on the same states" in grid
    assert "logit lens" in grid and "linear shortcut" in grid and "Patchscope" in grid
    held_out = " ".join(charts.nth(1).locator("svg").all_text_contents())
    assert "not measured on held-out text: Patchscope" in held_out
    expect(page.get_by_text("linear shortcut: stored")).to_be_visible(timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_circuit_page_builds_a_circuit_slider_click_and_export(server, page, tmp_path):
    """On the default model: a small IOI circuit (3 pairs, EAP), the threshold slider moved, a node clicked
    in the graph (its per-pair scores appear), and the graph downloaded as JSON."""
    import re

    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    page.goto(f"{server}/circuits?ci_task=ioi&ci_pairs=3&ci_methods=atp")  # a link runs its request
    charts = page.locator('[data-testid="stPlotlyChart"]')
    expect(page.get_by_text("Faithfulness by ablation").first).to_be_visible(timeout=400_000)
    page.wait_for_selector(IDLE, timeout=400_000)
    graph = charts.filter(has_text="Circuit of").first
    before = " ".join(graph.locator("svg").all_text_contents())
    assert "all 100 edges with" in before  # the default threshold: the 100 strongest edges
    slider = page.get_by_role("slider").first
    slider.focus()
    page.keyboard.press("ArrowLeft")  # 100 -> 50 edges
    page.wait_for_selector(IDLE, timeout=120_000)
    expect(page.get_by_text("50 edges (|score|")).to_be_visible(timeout=60_000)
    # click an attention head: the node traces come last (embeddings, heads, MLPs, logits)
    # Plotly may redraw the chart once more after the rerun (a resize): find the point again until it holds still
    box = None
    for _ in range(40):
        try:
            graph = charts.filter(has_text="Circuit of").first
            traces = graph.locator("g.trace.scatter")
            point = traces.nth(traces.count() - 3).locator("path.point").nth(4)  # head 4 of block 0
            point.scroll_into_view_if_needed(timeout=5_000)
            box = point.bounding_box(timeout=5_000)
        except PlaywrightError:
            box = None
        if box:
            break
        page.wait_for_timeout(500)
    assert box, "the graph's head nodes never became visible"
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)  # plotly reports a click on the point it hovers
    page.wait_for_timeout(500)
    page.mouse.click(*centre)
    picker = page.get_by_role("combobox", name="Node (or click one in the graph)")
    expect(picker).to_have_value("a0.h4", timeout=120_000)
    page.wait_for_selector(IDLE, timeout=120_000)
    titles = " ".join(" ".join(chart.locator("svg").all_text_contents()) for chart in charts.all())
    assert re.search(r"a0\.h4: score per pair", titles) and re.search(r"Head a0\.h4 on pair 1", titles)
    with page.expect_download(timeout=60_000) as download_info:
        page.get_by_role("button", name="Download the graph as JSON").click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    document = json.loads(saved.read_text())
    assert document["format"] == "layerlens-circuit-graph" and document["method"] == "atp"
    assert len(document["edges"]) == 44371 and document["task"]["task"] == "ioi"
    assert page.locator('[data-testid="stException"]').count() == 0
