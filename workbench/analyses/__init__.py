"""Analyses: pure functions (model, request, recorded activations) -> frozen result dataclasses.

Each module cites its paper, defines ``NAME`` and ``VERSION`` (bumped whenever
its numbers could change, so cached results are keyed to the code), a frozen
request and a frozen result whose ``__post_init__`` checks shapes.
"""
