"""Sink levels: how often, and at which layers, secondary attention sinks appear over a prompt set.

Wong et al., "On the Existence and Behaviour of Secondary Attention Sinks": secondary
sinks appear at characteristic depths ("sink levels") set by the MLP that creates them.
This batch mode runs the single-prompt probe (``attention_sinks``) on every prompt of a
set and collects each secondary sink: its prompt, position, token, onset slot (the
residual slot where it first is a sink), lifetime, creating MLP block, that MLP write's
alignment with the sink direction and its L2 norm; plus a per-slot onset histogram of the
secondary sinks. Tokens of the other kinds (primary-like, noise) are listed too, with their
kind, so a model whose every token looks like a sink (anisotropy) is visible as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench import prompts
from workbench.analyses import attention_sinks
from workbench.analyses.attention_sinks import (
    KIND_FIRST,
    KIND_NONE,
    KIND_SECONDARY,
    SinkProbeRequest,
    SinkProbeResult,
    SinkThresholds,
)
from workbench.analyses.base import Analysis
from workbench.errors import BadRequest

NAME = "sink_levels"  # until 2026-12: "attention_sink_levels" (read from old bundles)
VERSION = 3  # 3: byte tokens shown as <0x..>
MAX_PROMPTS = 200
PROMPT_SET = Path(__file__).resolve().parent.parent / "data" / "sink_prompts.txt"


def default_prompts() -> tuple[str, ...]:
    """The bundled prompt set (one prompt per line)."""
    lines = PROMPT_SET.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line.strip())


@dataclass(frozen=True)
class SinkLevelsRequest(SinkThresholds):
    prompts: tuple[str, ...] = ()

    def __post_init__(self):
        super().__post_init__()
        if not self.prompts:
            raise BadRequest("The prompt set is empty: give at least one prompt (one per line).")
        if len(self.prompts) > MAX_PROMPTS:
            raise BadRequest(f"At most {MAX_PROMPTS} prompts per batch, got {len(self.prompts)}.")
        if not all(isinstance(p, str) for p in self.prompts):
            raise BadRequest("Every prompt in the set must be text.")

    def probe_request(self, prompt: str) -> SinkProbeRequest:
        return SinkProbeRequest(
            eps=self.eps, cos_threshold=self.cos_threshold, primary_margin=self.primary_margin,
            min_secondary_lifetime=self.min_secondary_lifetime, prompt=prompt,
        )


@dataclass(frozen=True, eq=False)
class SinkLevelsResult:
    """One row per prompt (``prompt_*``) and one row per sink token other than position 0 (``sink_*``)."""

    model_name: str
    n_layers: int
    first_is_bos: bool
    prompt_first_fraction: np.ndarray  # (prompts,) float32: fraction of (block, head) sinking on position 0
    prompt_window: np.ndarray  # (prompts, 2) int64: BOS sink window, residual slots (start, end)
    prompt_secondary_count: np.ndarray  # (prompts,) int64
    sink_prompt: np.ndarray  # (sinks,) int64: index of the prompt
    sink_position: np.ndarray  # (sinks,) int64
    sink_kind: np.ndarray  # (sinks,) str: secondary, primary-like or noise
    sink_token: np.ndarray  # (sinks,) str
    sink_onset: np.ndarray  # (sinks,) int64: residual slot where it appears (its "sink level")
    sink_lifetime: np.ndarray  # (sinks,) int64
    sink_creator: np.ndarray  # (sinks,) int64: block whose MLP creates it
    sink_alignment: np.ndarray  # (sinks,) float32: cos(creator MLP write, sink direction)
    sink_mlp_norm: np.ndarray  # (sinks,) float32: ||creator MLP write||
    onset_counts: np.ndarray  # (n_layers + 1,) int64: secondary sinks appearing at each slot (sink levels)

    def __post_init__(self):
        n_prompts = self.prompt_first_fraction.shape[0]
        n_sinks = self.sink_prompt.shape[0]
        expected = {
            "prompt_window": (n_prompts, 2),
            "prompt_secondary_count": (n_prompts,),
            "sink_position": (n_sinks,),
            "sink_kind": (n_sinks,),
            "sink_token": (n_sinks,),
            "sink_onset": (n_sinks,),
            "sink_lifetime": (n_sinks,),
            "sink_creator": (n_sinks,),
            "sink_alignment": (n_sinks,),
            "sink_mlp_norm": (n_sinks,),
            "onset_counts": (self.n_layers + 1,),
        }
        for field_name, shape in expected.items():
            actual = getattr(self, field_name).shape
            if actual != shape:
                raise ValueError(f"SinkLevelsResult.{field_name} has shape {actual}, expected {shape}")

    def count(self, kind: str) -> int:
        return int((self.sink_kind == kind).sum())

    @property
    def share_with_secondary(self) -> float:
        """Fraction of prompts with at least one secondary sink."""
        return float((self.prompt_secondary_count > 0).mean())



def aggregate(model_name: str, probes: list[SinkProbeResult]) -> SinkLevelsResult:
    """Collect the sink tokens of every probe (one probe per prompt, in prompt order)."""
    if not probes:
        raise ValueError("no probes to aggregate")
    n_layers = probes[0].n_layers
    rows: list[tuple] = []
    for index, probe in enumerate(probes):
        for pos in np.flatnonzero((probe.kinds != KIND_NONE) & (probe.kinds != KIND_FIRST)):
            creator = int(probe.creator_block[pos])
            rows.append(
                (
                    index, int(pos), str(probe.tokens[pos]), int(probe.onset_slot[pos]), int(probe.lifetimes[pos]),
                    creator, float(probe.mlp_alignment[creator, pos]), float(probe.mlp_norm[creator, pos]),
                    str(probe.kinds[pos]),
                )
            )
    columns = list(zip(*rows, strict=True)) if rows else [()] * 9
    onset = np.array(columns[3], dtype=np.int64)
    kinds = np.array(columns[8], dtype=str)
    return SinkLevelsResult(
        model_name=model_name,
        n_layers=n_layers,
        first_is_bos=bool(probes[0].first_is_bos),
        prompt_first_fraction=np.array([p.first_head_fraction for p in probes], dtype=np.float32),
        prompt_window=np.array([[p.window_start, p.window_end] for p in probes], dtype=np.int64),
        prompt_secondary_count=np.array([len(p.secondary_positions()) for p in probes], dtype=np.int64),
        sink_prompt=np.array(columns[0], dtype=np.int64),
        sink_position=np.array(columns[1], dtype=np.int64),
        sink_kind=kinds,
        sink_token=np.array(columns[2], dtype=str),
        sink_onset=onset,
        sink_lifetime=np.array(columns[4], dtype=np.int64),
        sink_creator=np.array(columns[5], dtype=np.int64),
        sink_alignment=np.array(columns[6], dtype=np.float32),
        sink_mlp_norm=np.array(columns[7], dtype=np.float32),
        onset_counts=np.bincount(onset[kinds == KIND_SECONDARY], minlength=n_layers + 1).astype(np.int64),
    )


def check(request: SinkLevelsRequest, settings) -> None:
    prompts.check_texts(request.prompts, "Prompt", settings)


def run(ctx, request: SinkLevelsRequest, progress) -> SinkLevelsResult:
    """The sink probe over a prompt set (each probe cached on its own), secondary sinks collected;
    the aggregate of the prompts probed so far is reported as a partial result along the way."""
    prompts.check_texts(request.prompts, "Prompt", ctx.settings, ctx.model)  # all of them, before the first
    probes, every = [], max(1, len(request.prompts) // 8)  # a partial result (the first prompts) 8 times a run
    for index, text in enumerate(request.prompts):
        progress(index / len(request.prompts), f"Probing prompt {index + 1} of {len(request.prompts)}")
        probes.append(ctx.run(attention_sinks.ANALYSIS, request.probe_request(text)))
        if len(probes) % every == 0 and len(probes) < len(request.prompts):
            ctx.partial(aggregate(ctx.name, probes))
    return aggregate(ctx.name, probes)


ANALYSIS = Analysis(
    name=NAME, version=VERSION, title="Attention sinks over a prompt set", Request=SinkLevelsRequest,
    Result=SinkLevelsResult, run=run, check=check,
)
