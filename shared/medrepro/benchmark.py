"""Helpers shared by the experiments' `bench` commands."""

from collections.abc import Sequence

import numpy as np


def scaling_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """The least-squares slope of log seconds against log size: 1.0 is linear, 2.0 quadratic."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])
