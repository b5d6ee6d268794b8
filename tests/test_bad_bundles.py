"""Bad export bundles: every malformed bundle is one line on stderr and exit code 2 (0: the figure
is the same, 1: it differs, 2: bad input), and reading a zip bomb costs no memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from workbench import cli, export
from workbench.analyses.logit_lens import LogitLensRequest
from workbench.config import PROJECT_ROOT
from workbench.errors import BadBundle, BadRequest

GIB = 1 << 30


@pytest.fixture(scope="module")
def good_manifest(tmp_path_factory) -> dict:
    """A valid manifest (of a tiny model's logit lens), built without running anything."""
    source = export.FigureSource("logit_lens", "smollm2-135m", LogitLensRequest("one two", top_k=3))
    return {"format": export.BUNDLE_FORMAT, "format_version": export.BUNDLE_VERSION, "figure": "logit_lens:heatmap",
            "title": "", "style": {"name": "slide", "width_in": 10.0, "height_in": 5.6, "font_pt": 14.0,
                                   "font_family": "Arial"},
            "files": {}, "versions": {}, "created": "2026-12-01T00:00:00+00:00",
            "sources": [source.to_json("0" * 64)], "regenerate": "python -m workbench regenerate <bundle>"}


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _with_manifest(path: Path, manifest) -> Path:
    text = manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest)
    return _zip(path, {"manifest.json": text, "figure.json": b"{}"})


@pytest.fixture(scope="module")
def bomb(tmp_path_factory, good_manifest) -> Path:
    """A small zip whose figure.json inflates to 1 GiB of zeros (written in 1 MiB chunks)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("manifest.json", json.dumps(good_manifest))
        with archive.open("figure.json", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(GIB // len(chunk)):
                member.write(chunk)
    assert path.stat().st_size < 8 << 20
    return path


def _variants(manifest: dict) -> dict[str, object]:
    """Broken manifests, by what is wrong with them."""
    source = manifest["sources"][0]
    return {
        "not JSON": b"{not json",
        "not an object": json.dumps([1, 2]),
        "unknown style key": {**manifest, "style": {**manifest["style"], "colour": "red"}},
        "style missing a key": {**manifest, "style": {k: v for k, v in manifest["style"].items() if k != "width_in"}},
        "style of the wrong type": {**manifest, "style": {**manifest["style"], "font_pt": "big"}},
        "style not an object": {**manifest, "style": "slide"},
        "absurd size": {**manifest, "style": {**manifest["style"], "width_in": 1e9}},
        "sources not a list": {**manifest, "sources": {"analysis": "logit_lens"}},
        "a source not an object": {**manifest, "sources": ["logit_lens"]},
        "a source without a model": {**manifest, "sources": [{k: v for k, v in source.items() if k != "model"}]},
        "a model that is not text": {**manifest, "sources": [{**source, "model": 7}]},
        "a request that is not an object": {**manifest, "sources": [{**source, "request": "prompt"}]},
        "a request with an unknown field": {**manifest, "sources": [{**source, "request": {"promt": "x"}}]},
        "an unknown analysis": {**manifest, "sources": [{**source, "analysis": "lens"}]},
        "a version that is not a number": {**manifest, "sources": [{**source, "analysis_version": "1"}]},
        "no figure": {k: v for k, v in manifest.items() if k != "figure"},
        "a figure that is not text": {**manifest, "figure": ["logit_lens:heatmap"]},
        "a title that is not text": {**manifest, "title": 3},
        "wrong format version": {**manifest, "format_version": 99},
        "a figure of another analysis": {**manifest, "figure": "patching:heatmap"},
    }


def test_every_malformed_manifest_is_a_bad_bundle(tmp_path, good_manifest):
    export.read_bundle(_with_manifest(tmp_path / "good.zip", good_manifest))  # the baseline reads
    for index, (what, manifest) in enumerate(_variants(good_manifest).items()):
        with pytest.raises(BadBundle) as caught:
            export.read_bundle(_with_manifest(tmp_path / f"{index}.zip", manifest))
        assert "\n" not in str(caught.value), what
        assert isinstance(caught.value, BadRequest)


@pytest.mark.parametrize("what", ["not a zip", "not JSON", "unknown style key", "sources not a list",
                                  "a source without a model", "a model that is not text", "too many members",
                                  "a member in a folder"])
def test_cli_regenerate_of_a_bad_bundle_is_one_line_and_exit_2(tmp_path, good_manifest, capsys, what, monkeypatch):
    monkeypatch.setenv("LAYERLENS_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "bad.zip"
    if what == "not a zip":
        path.write_bytes(b"PK\x03\x04 but not really a zip")
    elif what == "too many members":
        _zip(path, {"manifest.json": json.dumps(good_manifest).encode(),
                    **{f"extra{i}.txt": b"x" for i in range(export.MAX_BUNDLE_MEMBERS)}})
    elif what == "a member in a folder":
        _zip(path, {"manifest.json": json.dumps(good_manifest).encode(), "../figure.json": b"{}"})
    else:
        _with_manifest(path, _variants(good_manifest)[what])
    capsys.readouterr()
    assert cli.main(["regenerate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "bad-regenerated").exists()


def test_a_zip_bomb_is_refused_without_reading_it(bomb):
    tracemalloc.start()
    try:
        with pytest.raises(BadBundle, match="figure.json") as caught:
            export.read_bundle(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"{peak / 2**20:.0f} MB"
    assert "\n" not in str(caught.value)


def test_a_member_whose_header_lies_about_its_size_cannot_exceed_the_cap(tmp_path, good_manifest):
    """The central directory says 1 kB; the data inflates to 2x the cap: the read stops at the cap."""
    real = export.MAX_BUNDLE_MEMBER_BYTES * 2
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("manifest.json", json.dumps(good_manifest))
        with archive.open("data.csv", "w") as member:
            chunk = bytes(1 << 20)
            for _ in range(real // len(chunk)):
                member.write(chunk)
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the last central directory entry: data.csv
    assert data[entry + 46:entry + 54] == b"data.csv"
    data[entry + 24:entry + 28] = (1000).to_bytes(4, "little")  # uncompressed size: 1000 bytes
    path.write_bytes(bytes(data))
    assert zipfile.ZipFile(path).getinfo("data.csv").file_size == 1000
    tracemalloc.start()
    try:
        with pytest.raises(BadBundle) as caught:
            export.read_bundle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20 and "\n" not in str(caught.value)


def test_an_oversized_file_in_a_bundle_directory_is_refused(tmp_path, good_manifest):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(good_manifest))
    with open(folder / "figure.png", "wb") as handle:  # sparse: no disk used
        handle.truncate(GIB)
    with pytest.raises(BadBundle, match="figure.png"):
        export.read_bundle(folder)


def test_the_cli_exits_2_on_a_zip_bomb(bomb, tmp_path):
    env = {**os.environ, "LAYERLENS_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "workbench", "regenerate", str(bomb)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "figure.json" in done.stderr


def test_exit_codes_are_documented():
    text = " ".join(cli.build_parser().format_help().split())
    assert "1 the regenerated figure differs, 2 bad input" in text
    assert "2: bad input" in cli.__doc__ and "1: the regenerated figure differs" in cli.__doc__
    assert (cli.EXIT_SAME, cli.EXIT_DIFFERS, cli.EXIT_BAD_INPUT) == (0, 1, 2)
