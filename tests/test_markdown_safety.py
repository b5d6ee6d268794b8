"""User text never renders as Markdown or HTML: ``ui.escape`` (pages) and ``figures.plain`` (charts).

* A scan of the page sources (app.py, app_pages/, ui/): every text that a Streamlit call renders as
  Markdown (bodies, labels, help, tab names, status and progress text) is a literal, or every
  value put into it is ``escape``d or formatted as a number (``{n:d}``, ``{x:.2f}``); names whose
  text is audited constant Markdown are listed in ``AUDITED`` with the reason.
* ``escape`` against GitHub-flavoured Markdown's autolink literals and Streamlit's icon codes.
* Every figure of every analysis, run on a model whose directory path holds a link, shows the path
  with no plotly markup in it.
* Pages opened on hostile links (AppTest): what they hand to Markdown has nothing a renderer would
  link. The browser checks (a real Chromium, links in the address) are in ``test_browser_injection.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil

import pytest

import ui
from tests.analysis_examples import examples
from workbench.analyses import ANALYSES
from workbench.config import PROJECT_ROOT
from workbench.figures import ZWSP, display_token, plain
from workbench.figures.concept_depth import curves

SOURCES = ["app.py", *sorted(f"app_pages/{p.name}" for p in (PROJECT_ROOT / "app_pages").glob("*.py")),
           *sorted(f"ui/{p.name}" for p in (PROJECT_ROOT / "ui").glob("*.py"))]
# Streamlit calls whose first positional argument (or label=/body=/text=/help=) renders Markdown.
MARKDOWN_CALLS = {
    "markdown", "caption", "title", "header", "subheader", "error", "warning", "info", "success", "toast", "write",
    "badge", "metric", "expander", "popover", "status", "spinner", "button", "download_button", "link_button",
    "page_link", "form_submit_button", "checkbox", "toggle", "radio", "selectbox", "multiselect", "select_slider",
    "slider", "text_input", "text_area", "number_input", "date_input", "time_input", "file_uploader", "camera_input",
    "color_picker", "pills", "segmented_control",
}
KEYWORDS = ("label", "body", "text", "help")
# Functions of ``ui`` that pass a parameter on as Markdown: their callers' arguments are checked instead.
PASS_THROUGH = {"header": (0, 1)}  # ui.header(title, caption)
FORM_PASS_THROUGH = {"run": 1, "box": 1}  # form.run(analysis, hint), form.box(name, button)
AUDITED = {  # (file, expression) -> why its text is safe Markdown
    ("ui/__init__.py", "title"): "ui.header's title: every caller's argument is checked (PASS_THROUGH)",
    ("ui/__init__.py", "caption"): "ui.header's caption: every caller's argument is checked (PASS_THROUGH)",
    ("ui/links.py", "hint"): "RequestForm.run's hint: every caller's argument is checked (FORM_PASS_THROUGH)",
    ("ui/links.py", "button"): "RequestForm.box's button: every caller's argument is checked (FORM_PASS_THROUGH)",
    ("ui/export_panel.py", "export.NO_BROWSER"): "a constant of workbench.export (Markdown with code spans)",
    ("ui/export_panel.py", "fmt.upper()"): "a button label from the constant export.FORMATS",
    ("app_pages/attention_sinks.py", "label"): "a widget label from the constant THRESHOLDS table",
    ("app_pages/patching.py", "label"): "a widget label from the constant RULES table",
    ("app_pages/latent_language.py", "label"): "a widget label from a constant tuple in the loop header",
}
NUMBER_SPEC = re.compile(r"[-+ #0-9,_.]*[bcdeEfFgGnoxX%]$")


def _is_escape(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "escape")
        or (isinstance(node.func, ast.Attribute) and node.func.attr == "escape"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "ui")))


def _number(value: ast.FormattedValue) -> bool:
    """Formatted as a number: the format raises on text, so nothing user-written can come through."""
    spec = value.format_spec
    return (value.conversion == -1 and isinstance(spec, ast.JoinedStr) and len(spec.values) == 1
            and isinstance(spec.values[0], ast.Constant) and bool(NUMBER_SPEC.match(spec.values[0].value)))


def unsafe_parts(node: ast.AST, path: str) -> list[str]:
    """The pieces of a Markdown text that are neither literal, escaped, numbers nor audited."""
    if node is None or isinstance(node, ast.Constant) or _is_escape(node):
        return []
    if isinstance(node, ast.JoinedStr):
        return [ast.unparse(v.value) for v in node.values
                if isinstance(v, ast.FormattedValue) and not (_is_escape(v.value) or _number(v))]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return unsafe_parts(node.left, path) + unsafe_parts(node.right, path)
    if isinstance(node, ast.IfExp):
        return unsafe_parts(node.body, path) + unsafe_parts(node.orelse, path)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [part for item in node.elts for part in unsafe_parts(item, path)]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and isinstance(node.func.value, ast.Constant) and len(node.args) == 1
            and isinstance(node.args[0], (ast.GeneratorExp, ast.ListComp))):
        return unsafe_parts(node.args[0].elt, path)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "strip"
            and not node.args):
        return unsafe_parts(node.func.value, path)
    text = ast.unparse(node)
    return [] if (path, text) in AUDITED else [text]


def markdown_texts(tree: ast.AST):
    """(call, text node) for every argument of the scanned sources that Streamlit renders as Markdown."""
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
            continue
        name, owner = call.func.attr, call.func.value
        keywords = {k.arg: k.value for k in call.keywords}
        is_ui = isinstance(owner, ast.Name) and owner.id == "ui"
        if is_ui and name in PASS_THROUGH:
            for index in PASS_THROUGH[name]:
                if index < len(call.args):
                    yield call, call.args[index]
        elif (name in FORM_PASS_THROUGH and isinstance(owner, ast.Name) and owner.id.endswith("form")
              and len(call.args) > FORM_PASS_THROUGH[name]):
            yield call, call.args[FORM_PASS_THROUGH[name]]
        elif name == "tabs" and call.args:
            yield call, call.args[0]
        elif name == "progress":  # progress(value, text=...)
            yield from ((call, t) for t in [*call.args[1:2], keywords.get("text")] if t is not None)
        elif name == "update":  # status.update(label=...)
            if "label" in keywords:
                yield call, keywords["label"]
        elif name in MARKDOWN_CALLS and not is_ui:
            yield from ((call, t) for t in [*call.args[:1], *(keywords.get(k) for k in KEYWORDS)] if t is not None)


def test_the_scan_sees_the_pages_markdown():
    """The scan finds the calls it is meant to check (a scan that sees nothing passes for nothing)."""
    seen = {(path, call.func.attr) for path in SOURCES
            for call, _ in markdown_texts(ast.parse((PROJECT_ROOT / path).read_text()))}
    assert {("ui/__init__.py", "error"), ("ui/__init__.py", "status"), ("ui/__init__.py", "update"),
            ("app_pages/attention_sinks.py", "markdown"), ("app_pages/compare.py", "caption"),
            ("app_pages/home.py", "header"), ("app_pages/logit_lens.py", "run"),
            ("app_pages/tuned_lens.py", "progress"),
            ("app_pages/attention_sinks.py", "tabs"), ("app_pages/neurons.py", "subheader")} <= seen
    bad = ast.parse('st.error(f"Unknown model {name}")\nst.caption("x " + model)\nst.info(f"{n:d} {ui.escape(m)}")')
    assert [unsafe_parts(text, "page.py") for _, text in markdown_texts(bad)] == [["name"], ["model"], []]


@pytest.mark.parametrize("path", SOURCES)
def test_user_text_reaches_markdown_only_escaped(path):
    tree = ast.parse((PROJECT_ROOT / path).read_text())
    found = [f"{path}:{call.lineno}: {ast.unparse(call)[:100]} -> {parts}"
             for call, text in markdown_texts(tree) if (parts := unsafe_parts(text, path))]
    assert not found, "escape these with ui.escape (or format numbers as numbers):\n" + "\n".join(found)


def test_audited_names_still_exist():
    """Every audited exception is still in its file (a stale entry would excuse a future one)."""
    for path, expression in AUDITED:
        texts = {ast.unparse(t) for _, t in markdown_texts(ast.parse((PROJECT_ROOT / path).read_text()))}
        assert expression in texts, (path, expression)


# ------------------------------------------------------------------------------------------ escape

# What GitHub-flavoured Markdown links in the text after backslash escapes are resolved
# (mdast-util-gfm-autolink-literal), and Streamlit's icon codes.
GFM_URL = re.compile(r"(https?://|www(?=\.))([-.\w]+)([^ \t\r\n]*)", re.IGNORECASE)
GFM_EMAIL = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")
ICON = re.compile(r":material/[a-z_]+:", re.IGNORECASE)
HOSTILE = ["www.evil.example/login", "[click](http://evil.example)![x](http://evil.example/t.png)",
           "HTTPS://EVIL.example", "mail bob@evil.example", "mailto:bob@evil.example", "WWW.Evil.example",
           ":material/warning: :red[alert] :smile:", "<img src=x onerror=alert(1)>", "# heading\n- item\n1. one",
           "$x^2$ ~~s~~ **b** _i_ `c` | t | &amp; <b>"]


def resolved(markdown: str) -> str:
    """The text a Markdown renderer sees once backslash escapes are resolved."""
    return re.sub(r"\\(.)", r"\1", markdown)


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_leaves_no_autolink_nor_markup(text):
    shown = resolved(ui.escape(text))
    assert not GFM_URL.search(shown) and not GFM_EMAIL.search(shown) and not ICON.search(shown), shown
    assert shown.replace(ui.WORD_JOINER, "") == text  # the reader sees the text as written
    escaped = ui.escape(text)
    for char in "[]<>*_`$~|#&:":  # every Markdown character is backslash-escaped
        assert escaped.count("\\" + char) >= text.count(char) or char not in text, char


def test_escape_keeps_plain_text_plain():
    assert ui.escape("The capital of France is Paris") == "The capital of France is Paris"
    assert ui.escape("org/model") == "org/model"


# ------------------------------------------------------------------------------------------ figures

LINK = '<a href="http://evil.example">click</a>'
PLOTLY_MARKUP = re.compile(r"<(/?)(a|b|br|em|font|i|s|span|sub|sup|u)([\s>/])|&(#\d+;|#x[0-9a-f]+;|[a-z]+;)", re.I)


def test_plain_defuses_plotly_markup():
    assert plain(LINK) == f'<{ZWSP}a href="http://evil.example">click<{ZWSP}/a>'
    assert not PLOTLY_MARKUP.search(plain(LINK + "<b>x</b>&amp;<br/>"))
    assert plain("%{y}") == f"%{ZWSP}{{y}}"  # no hover-template substitution
    assert plain("smollm2-135m") == "smollm2-135m" and plain(plain(LINK)) == plain(LINK)
    assert display_token("<b>") == plain("<b>")


def _strings(value, path=""):
    """(path, text) of every string in a figure's JSON, except hover templates' own markup."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


HOSTILE_DIR = '<a href="http:evil.example">click'  # a directory name is all a figure shows of a path


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory, tiny_dirs) -> str:
    """A tiny model whose directory name holds a link: titles show a path's last component (its
    short name, ``catalog.display_name``), so that is where the markup must be neutralised."""
    target = tmp_path_factory.mktemp("hostile") / HOSTILE_DIR
    shutil.copytree(tiny_dirs["llama"], target)
    return str(target)


@pytest.fixture(scope="module")
def hostile_seq2seq(tmp_path_factory, seq2seq_dirs) -> str:
    """The same hostile name on a tiny T5, for the encoder-decoder analyses."""
    target = tmp_path_factory.mktemp("hostile_seq2seq") / HOSTILE_DIR
    shutil.copytree(seq2seq_dirs["t5"], target)
    return str(target)


NO_MODEL_IN_TITLES = {"neuron_vocab", "neuron_effect", "activation_patching"}  # none names the model
LINK_TAG = re.compile(r"</?a[\s>]", re.I)  # no figure links anything: any <a> came from the hostile name


def _hostile_strings(fig) -> tuple[list, list]:
    """(strings with a plotly link tag in them, (path, string) of those naming evil.example)."""
    strings = list(_strings(json.loads(fig.to_json())))
    return [(p, s) for p, s in strings if LINK_TAG.search(s)], [(p, s) for p, s in strings if "evil.example" in s]


@pytest.mark.parametrize("analysis", [a for a in ANALYSES if a.name != "latent_language"], ids=lambda a: a.name)
def test_figures_show_a_hostile_model_name_without_markup(analysis, hostile_model, hostile_seq2seq, workbench):
    result = workbench.run(analysis, hostile_seq2seq if analysis.encoder_decoder else hostile_model,
                           examples()[analysis.name])
    assert getattr(result, "model_name", HOSTILE_DIR) == HOSTILE_DIR
    shown = []
    for figure in analysis.figures:
        marked, named = _hostile_strings(analysis.figure(figure, result))
        assert not marked, (figure, marked)
        shown += [s for p, s in named if p.startswith(".layout")]  # in a title
    assert shown or analysis.name in NO_MODEL_IN_TITLES  # the name is still there, as text
    if analysis.name == "concept_depth":  # the task is an uploaded file's name
        task = dataclasses.replace(result, task=LINK, model_name="m")
        for fig in (curves([task]), curves([task, dataclasses.replace(task, model_name="n")], f"{LINK} vs n")):
            marked, named = _hostile_strings(fig)
            assert not marked and any(p.endswith(".name") for p, _ in named), (marked, named)  # in the legend


# ------------------------------------------------------------------------------------------ pages (AppTest)


def _rendered(at) -> list[str]:
    """The Markdown source of every element AppTest sees that Streamlit renders as Markdown."""
    kinds = ("error", "warning", "info", "success", "markdown", "caption", "subheader", "header", "title")
    return [element.value for kind in kinds for element in getattr(at, kind)] + [
        element.label for element in at.get("expander")]


def _linkable(source: str) -> list[str]:
    """What a Markdown renderer would link in ``source``: bracketed links, HTML, bare URLs, e-mail."""
    unescaped = re.findall(r"(?<!\\)[\[<]", source)
    shown = resolved(source)
    return unescaped + GFM_URL.findall(shown) + GFM_EMAIL.findall(shown) + ICON.findall(shown)


def test_hostile_links_reach_the_pages_only_escaped(app, tiny_dirs):
    from tests.page_helpers import open_link

    target = "<img src=x onerror=alert(1)> http://evil.example [a](http://evil.example) bob@evil.example"
    for page, params, phrase in (
            ("home", {"model": BARE_LINK}, BARE_LINK),
            ("home", {"model": MARKDOWN_LINK}, MARKDOWN_LINK),
            ("logit_lens", {"model": BARE_LINK, "ll_prompt": "Hi"}, BARE_LINK),
            ("logit_lens", {"model": str(tiny_dirs["llama"]), "ll_prompt": "Hi", "ll_target": target}, target)):
        at = open_link(app, f"app_pages/{page}.py", params)
        assert not at.exception
        sources = _rendered(at)
        assert any(phrase in resolved(s).replace(ui.WORD_JOINER, "") for s in sources), (page, sources)
        assert not [s for s in sources if _linkable(s)], (page, [(s, _linkable(s)) for s in sources if _linkable(s)])


BARE_LINK = "www.evil.example/login"
MARKDOWN_LINK = "[click](http://evil.example)![x](http://evil.example/t.png)"
