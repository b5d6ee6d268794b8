"""The writer process of the crash tests (``tests/test_store_crash.py``, the soak test): it imports
only the store, so a restarted writer is up in a second or two, and writes known entries forever."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.store import ActivationKey, ResultKey, Store

WRITER_LIMIT = 12_000_000  # small enough that the writer also evicts while it may be killed


@dataclass(frozen=True, eq=False)
class Big:
    values: np.ndarray
    labels: np.ndarray
    index: int


def big_result(index: int) -> Big:
    rng = np.random.default_rng(index)
    return Big(rng.standard_normal(250_000 + 1000 * index), np.array([f"tok{index}-{i}" for i in range(50)]), index)


def big_activations(index: int) -> np.ndarray:
    return np.random.default_rng(10_000 + index).standard_normal((6, 40, 256)).astype(np.float32)


def result_key(index: int) -> ResultKey:
    return ResultKey("crash_test", 1, "model", f"request-{index}")


def activation_key(index: int) -> ActivationKey:
    return ActivationKey("model", f"input-{index}", "resid")


def write_forever(path: str, start: int, slack: int | None = None) -> None:
    """The writer process: ~2 MB results and ~250 kB activation sets, reporting each committed write.
    ``slack``: a small compaction constant, so the file is rewritten and swapped every write or two;
    each compaction is announced before its copy starts ("copy") and before the swap ("swap")."""
    if slack is not None:
        from workbench.store import compaction

        compaction.SLACK_BYTES = slack
        copy, swap = compaction.write_fresh_copy, compaction.swap_in

        def announced_copy(cur, target):
            print("copy", flush=True)
            return copy(cur, target)

        def announced_swap(fresh, target):
            print("swap", flush=True)
            return swap(fresh, target)

        compaction.write_fresh_copy, compaction.swap_in = announced_copy, announced_swap
    with Store(path, max_bytes=WRITER_LIMIT) as store:
        for index in range(start, start + 10_000):
            store.put_result(result_key(index), big_result(index), model_name="m", request_json="{}")
            print(f"result {index}", flush=True)
            store.put_activations(activation_key(index), big_activations(index))
            print(f"activations {index}", flush=True)
