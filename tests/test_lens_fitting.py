"""Fitted lenses (lens_fitting): stored once, reused, fitted in the background, stoppable; the file
round trip is exact, a second request loads instead of refitting, a stopped fit leaves no file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from workbench import lens_fitting, lenses
from workbench.analyses import linear_shortcut
from workbench.analyses.linear_shortcut import LinearShortcutRequest
from workbench.errors import BadRequest, WorkbenchError
from workbench.lens_fitting import FitConfig, default_config

LINEAR = FitConfig("linear_shortcut", chunk_tokens=16, fit_chunks=8)
JACOBIAN = FitConfig("jacobian", chunk_tokens=16, fit_chunks=2)


@pytest.fixture
def counted(monkeypatch):
    """Counts the fits of each kind (the real fitters still run)."""
    calls = {kind: 0 for kind in lens_fitting.FIT_KINDS}
    for kind, fitter in list(lens_fitting.FITTERS.items()):
        def wrapped(model, config, progress, fitter=fitter, kind=kind):
            calls[kind] += 1
            return fitter(model, config, progress)
        monkeypatch.setitem(lens_fitting.FITTERS, kind, wrapped)
    return calls


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _files(workbench):
    root = workbench.settings.cache_dir / "lenses"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_config_checks_and_defaults():
    for bad in (dict(kind="tuned"), dict(kind="jacobian", chunk_tokens=4), dict(kind="linear_shortcut", fit_chunks=0),
                dict(kind="linear_shortcut", fit_chunks=513), dict(kind="jacobian", fit_chunks=65),
                dict(kind="jacobian", corpus="wiki")):
        with pytest.raises(BadRequest):
            FitConfig(**bad)
    assert default_config("jacobian").fit_chunks < default_config("linear_shortcut").fit_chunks
    assert default_config("linear_shortcut") == FitConfig("linear_shortcut")
    path = lens_fitting.lens_path(Path("/c"), "ab" * 32, LINEAR)
    assert path == lens_fitting.lens_path(Path("/c"), "ab" * 32, FitConfig("linear_shortcut", chunk_tokens=16,
                                                                           fit_chunks=8))  # same config, same file
    assert path.parent == Path("/c/lenses/linear_shortcut") and path.name.startswith("abab")
    assert path != lens_fitting.lens_path(Path("/c"), "ab" * 32, FitConfig("linear_shortcut", chunk_tokens=16,
                                                                           fit_chunks=9))


def test_store_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    lens = lenses.AffineLens(3, 5)
    with torch.no_grad():
        lens.weight.normal_()
        lens.bias.normal_()
    fitted = lens_fitting.FittedLens(lens, LINEAR, 1.25, 0.75, 123)
    path = tmp_path / "lenses" / "x.pt"
    lens_fitting.save_lens(path, "digest", fitted)
    back = lens_fitting.load_lens(path, "digest", LINEAR)
    assert back.lens.weight.detach().numpy().tobytes() == lens.weight.detach().numpy().tobytes()
    assert back.lens.bias.detach().numpy().tobytes() == lens.bias.detach().numpy().tobytes()
    assert (back.config, back.seconds, back.cpu_seconds, back.tokens) == (LINEAR, 1.25, 0.75, 123)
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temporary file left
    with pytest.raises(WorkbenchError, match="another model or config"):
        lens_fitting.load_lens(path, "other digest", LINEAR)
    path.write_bytes(b"not a torch file")
    with pytest.raises(WorkbenchError, match="unreadable"):
        lens_fitting.load_lens(path, "digest", LINEAR)
    assert lens_fitting.load_lens(tmp_path / "missing.pt", "digest", LINEAR) is None


@pytest.mark.parametrize("config", [LINEAR, JACOBIAN], ids=["linear", "jacobian"])
def test_second_call_loads_instead_of_refitting(workbench, tiny_dirs, counted, config):
    name = str(tiny_dirs["llama"])
    assert workbench.lens_fit_status(name, config).state == "missing"
    reports = []
    first = workbench.fitted_lens(name, config, lambda f, m: reports.append(f))
    assert counted[config.kind] == 1 and reports and first.tokens > 0 and first.seconds > 0
    status = workbench.lens_fit_status(name, config)
    assert status.state == "stored" and status.tokens == first.tokens
    second = workbench.fitted_lens(name, config)
    assert counted[config.kind] == 1  # loaded from the store
    assert second.lens.weight.detach().numpy().tobytes() == first.lens.weight.detach().numpy().tobytes()
    assert second.seconds == first.seconds and second.tokens == first.tokens
    assert len(_files(workbench)) == 1 and _files(workbench)[0].startswith(f"{config.kind}/")
    # another process (a fresh pool on the same cache) loads it too
    fresh = lens_fitting.FitPool(workbench.settings).fitted(workbench.model(name), config)
    assert counted[config.kind] == 1
    assert fresh.lens.bias.detach().numpy().tobytes() == first.lens.bias.detach().numpy().tobytes()


def test_the_stored_linear_shortcut_is_the_one_fitted_directly(workbench, tiny_dirs):
    name = str(tiny_dirs["gpt2"])
    model = workbench.model(name)
    fitted = workbench.fitted_lens(name, LINEAR)
    direct, tokens = lens_fitting.fit_linear(model, LINEAR)
    assert fitted.lens.weight.detach().numpy().tobytes() == direct.weight.detach().numpy().tobytes()
    prefix = len(model.tokenizer("").input_ids)  # <bos> where the tokenizer adds one
    assert fitted.tokens == tokens == 8 * (prefix + 16 - 1)  # eight chunks, the first position (a sink) left out


def test_the_linear_shortcut_analysis_fits_once_per_corpus_setting(workbench, tiny_dirs, counted):
    name = str(tiny_dirs["qwen2"])
    request = LinearShortcutRequest("The capital of France is", " Paris", chunk_tokens=16, fit_chunks=8, eval_chunks=1)
    result = workbench.linear_shortcut(name, request)
    assert counted["linear_shortcut"] == 1
    assert workbench.lens_fit_status(name, linear_shortcut.fit_config(request)).state == "stored"
    other = LinearShortcutRequest("When Mary and John went", chunk_tokens=16, fit_chunks=8, eval_chunks=2)
    again = workbench.linear_shortcut(name, other)
    assert counted["linear_shortcut"] == 1  # another prompt and held-out size: the same stored maps
    assert again.kl_tuned[-1] == pytest.approx(0.0, abs=1e-9) and result.kl_tuned[-1] == pytest.approx(0.0, abs=1e-9)
    # the same numbers as the maps fitted in place (the analysis before the store)
    direct = linear_shortcut.fit(workbench.model(name), request)
    stored = workbench.fitted_lens(name, linear_shortcut.fit_config(request)).lens
    torch.testing.assert_close(stored.weight, direct.weight, rtol=0, atol=0)


def test_background_fit_then_status_and_load(workbench, tiny_dirs, counted):
    name = str(tiny_dirs["gemma3_text"])
    status = workbench.start_lens_fit(name, JACOBIAN)
    assert status.state in ("fitting", "stored")
    _wait_for(lambda: workbench.lens_fit_status(name, JACOBIAN).state == "stored")
    assert workbench.start_lens_fit(name, JACOBIAN).state == "stored"  # stored: nothing starts
    fitted = workbench.fitted_lens(name, JACOBIAN)
    assert counted["jacobian"] == 1 and fitted.tokens > 0


def test_a_caller_waits_for_the_running_fit_instead_of_fitting_twice(workbench, tiny_dirs, counted, monkeypatch):
    name = str(tiny_dirs["llama"])
    gate = threading.Event()
    real = lens_fitting.FITTERS["jacobian"]

    def slow(model, config, progress):
        progress(0.0, "held")
        gate.wait(30)
        return real(model, config, progress)

    monkeypatch.setitem(lens_fitting.FITTERS, "jacobian", slow)
    workbench.start_lens_fit(name, JACOBIAN)
    _wait_for(lambda: workbench.lens_fit_status(name, JACOBIAN).message == "held")
    seen = []
    threading.Timer(0.5, gate.set).start()
    fitted = workbench.fitted_lens(name, JACOBIAN, lambda f, m: seen.append(m))
    assert any(m.startswith("Waiting for the running fit") for m in seen)
    assert workbench.lens_fit_status(name, JACOBIAN).state == "stored"
    assert counted["jacobian"] == 1  # ``slow`` wraps the counted fitter: one fit, not two
    stored = lens_fitting.load_lens(workbench.runtime.fits.path(workbench.model(name).digest, JACOBIAN),
                                    workbench.model(name).digest, JACOBIAN)
    assert stored.lens.weight.detach().numpy().tobytes() == fitted.lens.weight.detach().numpy().tobytes()


def test_stop_leaves_no_file(workbench, tiny_dirs):
    name = str(tiny_dirs["gpt2"])
    config = FitConfig("jacobian", chunk_tokens=16, fit_chunks=64)  # long enough to be stopped midway
    workbench.start_lens_fit(name, config)
    _wait_for(lambda: workbench.lens_fit_status(name, config).fraction > 0)
    status = workbench.stop_lens_fit(name, config)
    assert status.state == "stopped" and "nothing was stored" in status.message
    assert _files(workbench) == []  # no lens, no temporary file
    assert workbench.lens_fit_status(name, config).state == "stopped"


def test_a_cancelled_foreground_fit_leaves_no_file(workbench, tiny_dirs):
    name = str(tiny_dirs["llama"])

    class Cancelled(Exception):
        pass

    def cancel(fraction, message):
        if fraction and fraction > 0.2:
            raise Cancelled

    with pytest.raises(Cancelled):
        workbench.fitted_lens(name, FitConfig("jacobian", chunk_tokens=16, fit_chunks=4), cancel)
    assert _files(workbench) == []
    assert workbench.lens_fit_status(name, FitConfig("jacobian", chunk_tokens=16, fit_chunks=4)).state == "stopped"
    fitted = workbench.fitted_lens(name, FitConfig("jacobian", chunk_tokens=16, fit_chunks=4))  # a later call fits
    assert fitted.tokens > 0
