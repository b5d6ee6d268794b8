"""Figures of the linear shortcut: the same views as the tuned lens (``figures.tuned_lens``)."""

from __future__ import annotations

from workbench.figures.tuned_lens import held_out, trajectory

FIGURES = {"held_out": held_out, "trajectory": trajectory}
