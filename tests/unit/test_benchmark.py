"""The shared benchmark arithmetic."""

import pytest

from medrepro.benchmark import scaling_exponent


def test_scaling_exponent_is_the_slope_of_log_time_on_log_size():
    sizes = [400, 4000, 40000]
    assert scaling_exponent(sizes, [2.0 * n for n in sizes]) == pytest.approx(1.0)
    assert scaling_exponent(sizes, [3e-6 * n**2 for n in sizes]) == pytest.approx(2.0)
    # A fixed start-up cost bends the small end: below linear, as a benchmark of small sizes shows it.
    assert scaling_exponent(sizes, [1.0 + 1e-3 * n for n in sizes]) < 1.0
