"""The soak test's server process (``tests/test_store_soak.py``): ``python -m tests.soak_worker CONFIG_JSON``.

``serve``: like a server with several users, one ``Workbench`` on the cache shared by ``sessions``
threads, each running random example analyses (``tests/analysis_examples.py``, a few varied) and
random bad inputs (the tables of ``tests/test_bad_input.py``) on the tiny models, until it is killed.
Every step is one JSON line on stdout: ``start`` (a good request, before it runs), ``done`` (with
``stored``: false when the result was too large to cache), ``refused`` (a good request the model
cannot take, e.g. no single-token words), ``bad`` (a bad input, ``ok`` when it got a one-line
``WorkbenchError``) and ``bug`` (anything else, with its traceback).

``reference``: run the given requests one by one on a fresh cache with no limit, then exit normally.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.analysis_examples import examples  # noqa: E402
from workbench import registry  # noqa: E402
from workbench.analyses import ANALYSES, request_json  # noqa: E402
from workbench.analyses.attention_sinks import SinkProbeRequest  # noqa: E402
from workbench.analyses.depth_use import DepthUseRequest  # noqa: E402
from workbench.analyses.logit_lens import LogitLensRequest  # noqa: E402
from workbench.config import PROJECT_ROOT, Settings  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.service import Workbench  # noqa: E402
from workbench.store import Store, compaction  # noqa: E402

PROMPTS = ("The capital of France is", "When Mary and John went to the store, John gave a drink to",
           "One two three four five")
TARGETS = ("", " Paris", " Mary")
GOOD = "When Mary and John went to the store"
BY_NAME = {analysis.name: analysis for analysis in ANALYSES}

_print_lock = threading.Lock()


def emit(**event) -> None:
    with _print_lock:
        print(json.dumps(event), flush=True)


def settings(cache_dir: str) -> Settings:
    return Settings(cache_dir=Path(cache_dir), models_dir_override=PROJECT_ROOT / "cache" / "models", threads=1)


def good_request(rng: random.Random, name: str, table: dict):
    """The example request of ``name``; a few analyses vary their prompt or target (more keys, more eviction)."""
    if name == "logit_lens":
        return LogitLensRequest(rng.choice(PROMPTS), rng.choice(TARGETS))
    if name == "depth_use":
        return DepthUseRequest(rng.choice(PROMPTS))
    if name == "attention_sinks":
        return SinkProbeRequest(prompt=rng.choice(PROMPTS))
    return table[name]


def bad_call(rng: random.Random, wb: Workbench, model: str, table: dict):
    """(case name, a call that must be refused with a WorkbenchError)."""
    from tests.test_bad_input import BAD_ANSWERS, BAD_NAMES, BAD_PROMPTS

    kind = rng.choice(("prompt", "answer", "name", "request"))
    if kind == "prompt":
        case = rng.choice(sorted(c for c in BAD_PROMPTS if c != "huge"))
        prompt = BAD_PROMPTS[case][0]
        entry = rng.choice(("logit_lens", "depth_use", "attention_sinks"))
        make = {"logit_lens": lambda: LogitLensRequest(prompt), "depth_use": lambda: DepthUseRequest(prompt),
                "attention_sinks": lambda: SinkProbeRequest(prompt=prompt)}[entry]
        return f"prompt:{case}:{entry}", lambda: wb.run(BY_NAME[entry], model, make())
    if kind == "answer":
        case = rng.choice(sorted(BAD_ANSWERS))
        answer = BAD_ANSWERS[case][0]
        return f"answer:{case}", lambda: wb.logit_lens(model, LogitLensRequest(GOOD, target=answer))
    if kind == "name":
        case = rng.choice(sorted(BAD_NAMES))
        name = rng.choice(sorted(table))
        return f"name:{case}:{name}", lambda: wb.run(BY_NAME[name], BAD_NAMES[case][0], good_request(rng, name, table))
    name = rng.choice(sorted(table))
    return f"request:{name}", lambda: wb.run(BY_NAME[name], model, {"not": "a request"})


def session(wb: Workbench, models: dict[str, str], seed: int, table: dict) -> None:
    rng = random.Random(seed)
    while True:
        arch = rng.choice(sorted(models))
        if rng.random() < 0.3:
            case, call = bad_call(rng, wb, models[arch], table)
            try:
                call()
            except WorkbenchError as exc:
                message = str(exc)
                emit(event="bad", case=case, ok="\n" not in message and "Traceback" not in message,
                     error=type(exc).__name__, message=message[:300])
            except Exception as exc:  # noqa: BLE001  (reported to the test as a bug)
                emit(event="bug", case=case, error=repr(exc)[:300], traceback=traceback.format_exc())
            else:
                emit(event="bad", case=case, ok=False, error="accepted", message="")
            continue
        name = "concept_depth" if rng.random() < 0.15 else rng.choice(sorted(table))  # the one storing activations
        request = good_request(rng, name, table)
        step = dict(analysis=name, arch=arch, request=request_json(request))
        emit(event="start", **step)
        notes: list[str] = []
        try:
            wb.run(BY_NAME[name], models[arch], request, lambda _fraction, message, notes=notes: notes.append(message))
        except WorkbenchError as exc:
            emit(event="refused", error=type(exc).__name__, message=str(exc)[:300], **step)
        except Exception as exc:  # noqa: BLE001
            emit(event="bug", error=repr(exc)[:300], traceback=traceback.format_exc(), **step)
        else:
            emit(event="done", stored=not any(n.startswith("Not cached") for n in notes), **step)


def serve(config: dict) -> None:
    compaction.SLACK_BYTES = config["slack"]  # small: the file is compacted now and then while it serves
    cache = Path(config["cache"])
    emit(event="opening")
    store = Store(cache / "workbench.duckdb", max_bytes=config["max_bytes"])
    wb = Workbench(settings(str(cache)), store=store)
    table = {name: request for name, request in examples().items()  # the soak's models are decoder-only
             if not registry.entry(name).encoder_decoder}
    threads = [threading.Thread(target=session, args=(wb, config["models"], config["seed"] * 100 + i, table),
                                daemon=True) for i in range(config["sessions"])]
    for thread in threads:
        thread.start()
    emit(event="ready")
    for thread in threads:
        thread.join()


def reference(config: dict) -> None:
    wb = Workbench(settings(config["cache"]))
    try:
        for name, arch, data in config["requests"]:
            analysis = registry.entry(name)
            try:
                wb.run(analysis, config["models"][arch], analysis.request(json.loads(data)))
                emit(event="done", analysis=name, arch=arch)
            except WorkbenchError as exc:
                emit(event="refused", analysis=name, arch=arch, message=str(exc)[:300])
    finally:
        wb.close()


if __name__ == "__main__":
    CONFIG = json.loads(sys.argv[1])
    {"serve": serve, "reference": reference}[CONFIG["mode"]](CONFIG)
