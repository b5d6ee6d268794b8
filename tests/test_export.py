"""Export: paper styles, figure data, bundles that regenerate identical figures, the long-lived
export browser, the CLI, the registry's request round trip and per-layer summaries on l/L."""

from __future__ import annotations

import json
import time
import zipfile

import numpy as np
import plotly.graph_objects as go
import pytest

from tests.analysis_examples import examples
from tests.conftest import model_for
from workbench import cli, export, registry, summaries
from workbench.analyses import request_digest
from workbench.analyses.attention_sinks import SinkProbeRequest
from workbench.analyses.concept_depth import ConceptDepthRequest
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.analyses.neuron_classes import NeuronClassRequest
from workbench.analyses.patching import PatchingRequest
from workbench.analyses.sink_levels import SinkLevelsRequest
from workbench.errors import BadRequest

PROMPT = "The capital of France is"


def lens_spec(model: str, prompt: str = PROMPT, figure: str = "heatmap") -> export.FigureSpec:
    request = LogitLensRequest(prompt, top_k=3)
    return export.FigureSpec(f"logit_lens:{figure}", (export.FigureSource("logit_lens", model, request),))


# ------------------------------------------------------------------ registry


@pytest.mark.parametrize("request_obj", [
    LogitLensRequest(PROMPT, " Paris", 7),
    SinkProbeRequest(eps=0.25, prompt="a b c"),
    SinkLevelsRequest(prompts=("one two", "three four")),
    PatchingRequest("A B", "C B", " x", " y", ah_rule=True),
    NeuronClassRequest(fold_norm=True),
    ConceptDepthRequest("t", tuple("abcdefgh"), (0, 1) * 4, noise_tokens=2),
])
def test_request_json_round_trip_is_exact(request_obj):
    entry = next(e for e in registry.ENTRIES.values() if isinstance(request_obj, e.Request))
    data = json.loads(json.dumps(json.loads(export.request_json(request_obj))))
    rebuilt = entry.request(data)
    assert rebuilt == request_obj
    assert request_digest(rebuilt) == request_digest(request_obj)


def test_request_errors_are_clear():
    entry = registry.entry("logit_lens")
    with pytest.raises(BadRequest, match="no field.*promt"):
        entry.request({"promt": "x"})
    with pytest.raises(BadRequest, match="prompt"):
        entry.request({})
    with pytest.raises(BadRequest, match="Unknown analysis 'lens'"):
        registry.entry("lens")
    with pytest.raises(BadRequest, match="bundled concept task"):
        registry.entry("concept_depth").request({"task": "poetry"})
    wrong_types = [  # JSON values of the wrong kind never reach the request as TypeErrors
        ("logit_lens", {"prompt": "x", "top_k": "5"}, 'top_k must be int, not "5"'),
        ("logit_lens", {"prompt": "x", "top_k": True}, "top_k must be int, not true"),
        ("logit_lens", {"prompt": "x", "top_k": 5.5}, "top_k must be int, not 5.5"),
        ("logit_lens", {"prompt": ["x"]}, "prompt must be str"),
        ("sink_levels", {"prompts": "abc"}, "prompts is a list"),
        ("concept_depth", {"task": "t", "texts": list("abcdefgh"), "labels": [0, 1] * 3 + [0, "x"]},
         r"labels\[7\] must be int"),
    ]
    for name, data, message in wrong_types:
        with pytest.raises(BadRequest, match=message):
            registry.entry(name).request(data)
    assert registry.entry("neuron_classes").request({"null_coverage": 0.9}).null_coverage == 0.9


def test_a_bundled_concept_task_can_be_named():
    request = registry.entry("concept_depth").request({"task": "factual", "limit": 40, "noise_tokens": 1})
    assert request.task == "factual" and len(request.texts) == len(request.labels) == 40
    assert sorted(set(request.labels)) == [0, 1] and request.noise_tokens == 1


# ------------------------------------------------------------------ summaries on normalised depth


def test_depth_convention():
    assert summaries.slot_depth(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert summaries.block_depth(4).tolist() == [0.25, 0.5, 0.75, 1.0]


def test_summaries_of_real_results(workbench, tiny_dirs):
    model = str(tiny_dirs["llama"])
    lens = workbench.logit_lens(model, LogitLensRequest(PROMPT, " Paris"))
    kl, rank = summaries.summarise("logit_lens", lens)
    n_layers = len(lens.layer_labels) - 1
    assert kl.depth[0] == 0.0 and kl.depth[-1] == 1.0 and len(kl.depth) == n_layers + 1
    assert kl.values[-1] == pytest.approx(0.0, abs=1e-6)  # the last slot is the output: KL(final || final) = 0
    np.testing.assert_array_equal(rank.values, lens.target_rank)

    classes = workbench.neuron_classes(model, NeuronClassRequest())
    enrich, deplete = summaries.summarise("neuron_classes", classes)
    assert len(enrich.values) == n_layers and enrich.depth[0] == 1 / n_layers
    assert np.all(enrich.values + deplete.values <= 1 + 1e-12)
    expected = classes.fractions[:, [0, 1, 6, 7]].sum(axis=1)  # the enrichment family's columns
    np.testing.assert_allclose(enrich.values, expected)

    sinks = workbench.attention_sinks(model, SinkProbeRequest(prompt=PROMPT))
    mean_first, share = summaries.summarise("attention_sinks", sinks)
    np.testing.assert_allclose(mean_first.values, sinks.sink_scores[:, :, 0].mean(axis=1), rtol=1e-6)
    assert np.all((share.values >= 0) & (share.values <= 1))

    table = summaries.summary_table([kl, rank, enrich, deplete, mean_first, share])
    assert len(table) == 2 * (n_layers + 1) + 4 * n_layers
    assert set(table["analysis"]) == {"logit_lens", "neuron_classes", "attention_sinks"}


# ------------------------------------------------------------------ style and data


def test_paper_style_sets_size_font_and_colour_blind_cycle():
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    style = export.paper_style("single column")
    out = export.styled(fig, style)
    assert (out.layout.width, out.layout.height) == (round(3.4 * 96), round(2.6 * 96))
    assert out.layout.font.size == pytest.approx(7 * 96 / 72)
    assert tuple(out.layout.colorway) == export.OKABE_ITO
    assert fig.layout.width is None  # the original is untouched
    with pytest.raises(BadRequest, match="Unknown figure size"):
        export.paper_style("poster")


def test_figure_data_has_one_row_per_plotted_value():
    z = np.arange(6, dtype=np.float32).reshape(2, 3)
    fig = go.Figure([go.Heatmap(z=z, x=[10, 11, 12], y=["a", "b"], text=[["p", "q", "r"], ["s", "t", "u"]]),
                     go.Scatter(x=np.array([0.5, 1.5]), y=np.array([3.0, 4.0]), name="line")])
    data = export.figure_data(fig)
    heat = data[data.trace == 0]
    assert len(heat) == 6 and heat.z.astype(float).tolist() == z.ravel().tolist()
    assert heat.x.tolist() == [10, 11, 12, 10, 11, 12] and heat.y.tolist() == ["a"] * 3 + ["b"] * 3
    assert heat.text.tolist() == list("pqrstu")
    line = data[data.trace == 1]
    assert line.name.tolist() == ["line", "line"] and line.y.astype(float).tolist() == [3.0, 4.0]


# ------------------------------------------------------------------ bundles


def test_bundle_regenerates_an_identical_figure(workbench, tiny_dirs, settings, tmp_path):
    from workbench.service import Workbench

    spec = lens_spec(str(tiny_dirs["llama"]))
    bundle = export.make_bundle(workbench, spec, export.paper_style("double column"), formats=())
    path = bundle.write(tmp_path / "bundle")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["figure"] == "logit_lens:heatmap"
    assert manifest["sources"][0]["request"] == {"prompt": PROMPT, "target": "", "top_k": 3}
    assert manifest["sources"][0]["model_digest"] == workbench.local_model(str(tiny_dirs["llama"])).digest
    assert set(manifest["files"]) == {"figure.json", "data.csv"}

    # a fresh process-like backend on an empty cache recomputes the analysis from the manifest alone
    fresh = Workbench(settings.with_cache_dir(tmp_path / "other-cache"))
    try:
        regenerated = export.regenerate(fresh, export.read_bundle(path))
    finally:
        fresh.close()
    assert regenerated.identical and regenerated.warnings == ()
    assert regenerated.bundle.files["figure.json"] == bundle.files["figure.json"]
    assert regenerated.bundle.files["data.csv"] == bundle.files["data.csv"]


def test_a_changed_figure_or_model_is_reported(workbench, tiny_dirs, tmp_path):
    spec = lens_spec(str(tiny_dirs["llama"]))
    bundle = export.make_bundle(workbench, spec, export.paper_style("slide"), formats=())
    figure = json.loads(bundle.files["figure.json"])
    figure["layout"]["title"]["text"] = "edited by hand"
    manifest = bundle.manifest
    manifest["sources"][0]["model_digest"] = "0" * 64
    tampered = export.Bundle({**bundle.files, "figure.json": json.dumps(figure).encode(),
                              "manifest.json": json.dumps(manifest).encode()})
    zipped = tmp_path / "b.zip"
    zipped.write_bytes(tampered.zip_bytes())
    result = export.regenerate(workbench, export.read_bundle(zipped))
    assert not result.identical
    assert any("other weights" in w for w in result.warnings)


def test_overlay_bundle_of_two_models_regenerates(workbench, tiny_dirs):
    sources = tuple(export.FigureSource("logit_lens", str(tiny_dirs[a]), LogitLensRequest(PROMPT))
                    for a in ("llama", "gpt2"))
    spec = export.FigureSpec(export.OVERLAY, sources, "two tiny models")
    bundle = export.make_bundle(workbench, spec, export.paper_style("double column"), formats=())
    figure = json.loads(bundle.files["figure.json"])
    # each model by its short name (a directory's last component), never the server path (issue #15)
    assert [t["name"] for t in figure["data"]] == ["llama", "gpt2"]
    assert str(tiny_dirs["llama"].parent).encode() not in bundle.files["figure.json"]
    assert export.regenerate(workbench, bundle).identical


def test_not_a_bundle(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(BadRequest, match="not a LayerLens export bundle"):
        export.read_bundle(tmp_path / "x")
    (tmp_path / "y.zip").write_bytes(b"not a zip")
    with pytest.raises(BadRequest, match="Cannot read the bundle"):
        export.read_bundle(tmp_path / "y.zip")
    with pytest.raises(BadRequest, match="at least one"):
        export.FigureSpec("logit_lens:heatmap", ())
    source = export.FigureSource("logit_lens", "m", LogitLensRequest(PROMPT))
    with pytest.raises(BadRequest, match="exactly one logit_lens run"):
        export.FigureSpec("logit_lens:heatmap", (source, source))


# ------------------------------------------------------------------ images


def test_no_browser_fails_fast_with_a_clear_message():
    exporter = export.ImageExporter(find=lambda: None)
    start = time.perf_counter()
    with pytest.raises(export.ExportUnavailable, match="needs a Chromium browser.*apt-get install chromium"):
        exporter.render(go.Figure(), "svg", export.paper_style("slide"))
    assert time.perf_counter() - start < 1.0 and not exporter.is_open


@pytest.mark.browser
def test_one_long_lived_browser_renders_every_format():
    if export.find_browser() is None:
        pytest.skip("no Chromium here")  # CI installs Debian chromium, so this runs there
    exporter = export.ImageExporter()
    try:
        fig = export.styled(go.Figure(go.Scatter(x=[0, 1], y=[2, 3], name="Okabe")), export.paper_style("slide"))
        svg = exporter.render(fig, "svg", export.paper_style("slide"))
        browser = exporter._kaleido
        png = exporter.render(fig, "png", export.paper_style("slide"))
        pdf = exporter.render(fig, "pdf", export.paper_style("slide"))
        assert exporter._kaleido is browser and exporter.renders == 3  # one browser for all three
        assert svg.lstrip().startswith(b"<svg") and b'width="960"' in svg
        assert png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF")
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (round(960 * 300 / 96), round(538 * 300 / 96))  # 300 dpi
    finally:
        exporter.close()
    assert not exporter.is_open


# ------------------------------------------------------------------ command line


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(settings.cache_dir))
    monkeypatch.setenv("LAYERLENS_MODELS_DIR", str(settings.models_dir))


def test_cli_runs_an_analysis_and_regenerates_its_bundle(cli_env, tiny_dirs, tmp_path, capsys):
    out = tmp_path / "paris"
    rc = cli.main(["run", "logit_lens", "--model", str(tiny_dirs["gpt2"]), "--prompt", PROMPT,
                   "--request", '{"top_k": 2}', "--figure", "layer_curves", "--format", "none", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["data.csv", "figure.json", "manifest.json"]
    assert "regenerate with: python -m workbench regenerate" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["figure"] == "logit_lens:layer_curves" and manifest["sources"][0]["request"]["top_k"] == 2

    assert cli.main(["regenerate", str(out), "--out", str(tmp_path / "again.zip")]) == 0
    assert "identical figure: yes" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "again.zip") as archive:
        assert archive.read("figure.json") == (out / "figure.json").read_bytes()


def test_cli_bad_input_exits_2_with_one_line(cli_env, tiny_dirs, capsys):
    model = str(tiny_dirs["gpt2"])
    cases = [
        (["run", "logit_lens", "--model", model, "--request", "{not json"], "not valid JSON"),
        (["run", "logit_lens", "--model", model, "--request", "[1]"], "JSON object"),
        (["run", "logit_lens", "--model", model, "--prompt", ""], "empty"),
        (["run", "logit_lens", "--model", model, "--prompt", "x", "--figure", "pie"], "no figure 'pie'"),
        (["run", "logit_lens", "--model", "no-such-model", "--prompt", "x"], "no-such-model"),
        (["run", "nope"], "Unknown analysis"),
        (["run", "logit_lens", "--model", model, "--prompt", "x", "--request", '{"top_k": "5"}'], "must be int"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (argv, err)


def test_a_live_figure_bundle_records_data_but_is_not_regenerable(workbench):
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.5, 0.25, 0.125], name="loss"))
    bundle = export.figure_bundle(fig, export.paper_style("single column"), formats=())
    assert bundle.manifest["sources"] == [] and bundle.manifest["regenerate"] is None
    data = export.figure_data(go.Figure(json.loads(bundle.files["figure.json"])))
    assert data.y.astype(float).tolist() == [0.5, 0.25, 0.125]
    with pytest.raises(BadRequest, match="records no analysis run"):
        export.regenerate(workbench, bundle)


def test_paper_style_fits_heatmap_text_and_layer_ticks():
    rows = 31
    z = np.random.default_rng(0).random((rows, 5))
    fig = go.Figure(go.Heatmap(z=z, text=np.full((rows, 5), "tok"), texttemplate="%{text}"))
    fig.update_yaxes(tickmode="array", tickvals=list(range(rows)), ticktext=[str(i) for i in range(rows)])
    fig.update_xaxes(tickmode="array", tickvals=list(range(5)), ticktext=list("abcde"))
    style = export.paper_style("single column")
    out = export.styled(fig, style)
    cell_px = style.height_px * 0.7 / rows
    assert out.data[0].textfont.size <= 0.8 * cell_px + 1e-9
    label_px = style.font_pt * 96 / 72 * 1.2
    assert len(out.layout.yaxis.tickvals) * label_px <= style.height_px * 0.7  # layer labels no longer overlap
    assert list(out.layout.xaxis.ticktext) == list("abcde")  # every token label kept
    tiny = export.styled(go.Figure(go.Heatmap(z=np.zeros((400, 3)), text=np.full((400, 3), "t"),
                                              texttemplate="%{text}")), style)
    assert tiny.data[0].texttemplate == ""  # cells too small for text: none drawn


def test_cli_default_bundle_names_differ_per_model(cli_env, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arch in ("gpt2", "llama"):
        assert cli.main(["run", "logit_lens", "--model", str(tiny_dirs[arch]), "--prompt", PROMPT, "--format",
                         "none"]) == 0
    names = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert len(names) == 2 and names[0].startswith("logit_lens-heatmap-gpt2-") and "-llama-" in names[1]


ALLOWED_SCALES = ("Viridis", "PuOr")
NEUTRALS = {"#bbbbbb", "#999999", "#777777", "grey", "gray", "black", "white", "#000000", "#ffffff"}
PAIR = ("When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


def _colours(node, found: set, scales: list) -> None:
    """Every colour string and colour scale in a figure's JSON (the template's defaults are overridden by
    the style's colorway and each trace's own colours, so the template itself is not searched)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "template":
                continue
            if key == "colorscale" and value is not None:
                scales.append(value)
            elif key in ("color", "fillcolor", "bgcolor", "bordercolor") and isinstance(value, str):
                found.add(value)
            elif key in ("colorway",):
                found.update(value)
            else:
                _colours(value, found, scales)
    elif isinstance(node, list):
        for item in node:
            _colours(item, found, scales)


def _hex(colour: str) -> str:
    colour = colour.strip().lower()
    if colour.startswith("rgba(") or colour.startswith("rgb("):
        r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1:-1].split(",")[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    return colour


def test_every_registered_figure_uses_a_colour_blind_safe_palette(workbench, tiny_dirs, seq2seq_dirs):
    import plotly.colors

    requests = examples()
    assert set(requests) == set(registry.ENTRIES)  # a new analysis must be added here
    allowed = {c.lower() for c in export.OKABE_ITO} | NEUTRALS
    known_scales = [plotly.colors.get_colorscale(name) for name in ALLOWED_SCALES]
    drawn = 0
    for name, request in requests.items():
        entry = registry.entry(name)
        try:
            result = workbench.run(entry, model_for(entry, tiny_dirs, seq2seq_dirs), request)
        except BadRequest as exc:  # e.g. no single-token words for the tiny tokenizer
            assert name == "latent_language", (name, exc)
            continue
        for figure_name in entry.figures:
            figure = export.styled(entry.figure(figure_name, result), export.paper_style("double column"))
            found, scales = set(), []
            _colours(json.loads(figure.to_json()), found, scales)
            off_palette = {c for c in found if _hex(c) not in allowed}
            assert not off_palette, (name, figure_name, off_palette)
            for scale in scales:
                pairs = [[round(float(p), 6), str(c).lower()] for p, c in scale]
                expected = [[[round(float(p), 6), c.lower()] for p, c in known] for known in known_scales]
                assert pairs in expected, (name, figure_name, scale)
            drawn += 1
    assert drawn >= 20
