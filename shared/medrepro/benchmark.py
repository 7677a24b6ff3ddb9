"""Helpers shared by the experiments' `bench` commands."""

import time
from collections.abc import Callable, Sequence

import numpy as np


def scaling_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """The least-squares slope of log seconds against log size: 1.0 is linear, 2.0 quadratic."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def spread(values: Sequence[float]) -> dict:
    """Median, min and max of per-round figures, and the rounds themselves (what bench JSON reports
    beside a goal's ratio)."""
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "rounds": [float(v) for v in values]}


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_ratio(reference: Callable[[], object], candidate: Callable[[], object], rounds: int) -> dict:
    """Reference seconds over candidate seconds, per round: the two run back to back in each round,
    taking turns at going first, so that a busy machine's slow spells fall on both sides rather than
    on whichever was timed during one. `spread` of the per-round ratios, with each side's median seconds."""
    reference_s, candidate_s = [], []
    for r in range(rounds):
        if r % 2:
            candidate_s.append(seconds(candidate))
            reference_s.append(seconds(reference))
        else:
            reference_s.append(seconds(reference))
            candidate_s.append(seconds(candidate))
    return {**spread([a / b for a, b in zip(reference_s, candidate_s, strict=True)]),
            "reference_s": float(np.median(reference_s)), "candidate_s": float(np.median(candidate_s))}
