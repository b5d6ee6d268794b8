"""Links in a shared address cannot put links or images on a page: a real server and a real
Chromium open addresses whose model and target hold Markdown links, bare URLs, e-mail addresses
and HTML, and the rendered DOM is searched for them. Tiny models: no real model is loaded."""

from __future__ import annotations

import os
import shutil
import urllib.parse

import pytest

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, IDLE, streamlit_server

pytestmark = pytest.mark.browser

MARKDOWN_LINK = "[click](http://evil.example)![x](http://evil.example/t.png)"
BARE_LINK = "www.evil.example/login"
HTML = "<img src=x onerror=alert(1)>"
PLOTLY_LINK = '<a href="http://evil.example">click</a>'
INVISIBLE = dict.fromkeys(map(ord, "\u2060\u200b"))  # the word joiner and zero-width space the escapes add

# Every link and image in the page (SVG ones too: plotly draws titles as SVG text with <a> in them).
LINKS_AND_IMAGES = """() => [...document.querySelectorAll('a, img, image, iframe')].map(e => [e.tagName,
    e.getAttribute('href') || e.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || '',
    e.getAttribute('src') || ''])"""


HOSTILE_NAME = '<a href="http:evil.example">click'  # a directory name: what titles show of a path


@pytest.fixture(scope="module")
def hostile_dir(tiny_root, tiny_dirs) -> str:
    """A tiny model under the model roots (so a link may open it) whose directory name is an HTML link."""
    target = tiny_root / "hostile" / HOSTILE_NAME
    if not target.exists():
        shutil.copytree(tiny_dirs["llama"], target)
    return str(target)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("injection_cache"),
                          tmp_path_factory.mktemp("log") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian chromium is required for browser tests: apt-get install chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_link(browser, server: str, path: str, params: dict, wait_for: str):
    """A fresh page on ``path?params``, once the app is idle and ``wait_for`` shows in the page."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{server}/{path}?{urllib.parse.urlencode(params)}")
    page.wait_for_selector(IDLE, timeout=120_000)
    expect(page.locator('[data-testid="stMain"]')).to_contain_text(wait_for, timeout=120_000)
    page.wait_for_selector(IDLE, timeout=120_000)
    page.dialogs, page.requests = dialogs, requests
    return page


def shown(page, selector: str) -> str:
    """The text of every ``selector`` element as a reader sees it (invisible characters dropped)."""
    return " | ".join(page.locator(selector).all_inner_texts()).translate(INVISIBLE)


def assert_no_injection(page, server: str) -> None:
    found = page.evaluate(LINKS_AND_IMAGES)
    # the one allowed: the in-page anchor Streamlit gives the heading "www.evil.example/login"
    assert [e for e in found if "evil" in e[1] + e[2]] in ([], [["A", "#www-evil-example-login", ""]]), found
    assert not [e for e in found if e[1].startswith(("http", "//", "mailto")) and not e[1].startswith(server)], found
    assert not [e for e in found if e[0] in ("IMG", "IMAGE") and not e[2].startswith(server)], found
    assert not page.dialogs, page.dialogs  # no script ran
    assert not [u for u in page.requests if not u.startswith(server)], page.requests  # nothing fetched elsewhere
    assert page.locator('[data-testid="stException"]').count() == 0


def test_a_markdown_link_as_model_shows_as_text(server, browser):
    page = open_link(browser, server, "", {"model": MARKDOWN_LINK}, "Unknown model")
    assert MARKDOWN_LINK in shown(page, '[data-testid="stAlert"]')  # in the red box, literally
    assert_no_injection(page, server)
    page.close()


def test_a_bare_address_as_model_is_not_linked(server, browser):
    page = open_link(browser, server, "", {"model": BARE_LINK}, "hub")
    assert BARE_LINK in shown(page, '[data-testid="stMain"] h3')  # the model's heading on the home page
    assert BARE_LINK in shown(page, '[data-testid="stAlert"]')
    assert_no_injection(page, server)
    page.close()
    page = open_link(browser, server, "logit_lens", {"model": BARE_LINK, "ll_prompt": "Hi", "ll_target": HTML},
                     "hub downloads are off")
    assert f"Logit lens on {BARE_LINK}: failed" in shown(page, '[data-testid="stExpander"] summary')
    assert BARE_LINK in shown(page, '[data-testid="stAlert"]')
    assert_no_injection(page, server)
    page.close()


def test_a_target_with_html_and_links_shows_as_text(server, browser, tiny_dirs):
    target = f"{HTML} http://evil.example [a](http://evil.example) bob@evil.example"
    page = open_link(browser, server, "logit_lens", {"model": str(tiny_dirs["llama"]), "ll_prompt": "Hi",
                                                     "ll_target": target}, "not one")
    assert target in shown(page, '[data-testid="stAlert"]')
    assert_no_injection(page, server)
    page.close()


def test_a_model_path_holding_html_shows_as_text_in_the_charts(server, browser, hostile_dir):
    page = open_link(browser, server, "logit_lens", {"model": hostile_dir, "ll_prompt": "Hi there"},
                     "Export figure")
    from playwright.sync_api import expect

    charts = page.locator('[data-testid="stPlotlyChart"]')
    expect(charts).to_have_count(2, timeout=60_000)  # the charts mount after their export panels' text
    expect(charts.first.locator("svg .gtitle")).to_have_count(1, timeout=60_000)
    titles = " ".join(charts.first.locator("svg").all_text_contents()).translate(INVISIBLE)
    assert f"Logit lens: {HOSTILE_NAME}" in titles  # the model's short name, tags and all, as text
    assert f"Logit lens on {HOSTILE_NAME}: done" in shown(page, '[data-testid="stExpander"] summary')
    assert_no_injection(page, server)
    page.close()


def test_a_second_model_holding_html_shows_as_text_in_the_overlay(server, browser, tiny_dirs):
    page = open_link(browser, server, "compare", {"model": str(tiny_dirs["gpt2"]), "cmp_b": PLOTLY_LINK,
                                                  "cmp_analyses": "logit_lens"}, "vs")
    overlay = " ".join(page.locator('[data-testid="stPlotlyChart"]').first.locator("svg").all_text_contents())
    assert f"gpt2 vs {PLOTLY_LINK} on normalised depth" in overlay.translate(INVISIBLE)  # short names
    assert PLOTLY_LINK in shown(page, '[data-testid="stAlert"]')  # its own runs failed, with its name as text
    assert_no_injection(page, server)
    page.close()
