"""Shared benchmark helpers: timing medians and a backend on a throwaway store.

Benchmarks print times measured in one run and their ratios; they never touch the
user's cache file (which a running server may hold), only the converted models.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from workbench.config import load_settings
from workbench.service import Workbench


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    return interleaved_medians([action], repeats)[0]


def interleaved_medians(actions: list[Callable[[], object]], repeats: int,
                        clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Median seconds of each action, running them in turn ``repeats`` times, so that load from
    other processes hits every action alike; ``clock=time.process_time`` measures CPU time."""
    times: list[list[float]] = [[] for _ in actions]
    for _ in range(repeats):
        for action, bucket in zip(actions, times, strict=True):
            start = clock()
            action()
            bucket.append(clock() - start)
    return [statistics.median(bucket) for bucket in times]


def cpu(action: Callable[[], object]) -> tuple[object, float]:
    """``action()``'s value and the process CPU seconds it took (all threads)."""
    start = time.process_time()
    value = action()
    return value, time.process_time() - start


def printing_progress(step: float = 0.05) -> Callable[[float | None, str], None]:
    """A progress callback for long benchmarks: prints a line each time the fraction moves by ``step``."""
    last = [-1.0]

    def progress(fraction: float | None, message: str) -> None:
        if fraction is not None and fraction - last[0] >= step:
            last[0] = fraction
            print(f"  {fraction:4.0%} {message}", flush=True)

    return progress


@contextlib.contextmanager
def throwaway_workbench() -> Iterator[Workbench]:
    """A Workbench whose store lives in a temporary folder but which uses the converted models."""
    settings = load_settings()
    with tempfile.TemporaryDirectory() as tmp:
        wb = Workbench(replace(settings, cache_dir=Path(tmp), models_dir_override=settings.models_dir))
        try:
            yield wb
        finally:
            wb.close()


def forward_batch(model, sequences: list[list[int]]):
    """A plain padded batch forward pass (no nnsight), last-position logits only: the baseline
    the concept-depth extraction benchmark compares against."""
    import torch

    from workbench.tracing import _right_padded

    ids, mask, _ = _right_padded(sequences)
    with model.lock, torch.no_grad():
        out = model.hf_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), logits_to_keep=1)
    return out.logits[:, -1].float().cpu()
