"""The shared benchmark arithmetic."""

import pytest

from medrepro.benchmark import scaling_exponent


def test_scaling_exponent_is_the_slope_of_log_time_on_log_size():
    sizes = [400, 4000, 40000]
    assert scaling_exponent(sizes, [2.0 * n for n in sizes]) == pytest.approx(1.0)
    assert scaling_exponent(sizes, [3e-6 * n**2 for n in sizes]) == pytest.approx(2.0)
    # A fixed start-up cost bends the small end: below linear, as a benchmark of small sizes shows it.
    assert scaling_exponent(sizes, [1.0 + 1e-3 * n for n in sizes]) < 1.0



def test_interleaved_ratio_times_both_sides_in_every_round_taking_turns(monkeypatch):
    from medrepro import benchmark

    calls: list[str] = []
    # Seconds in call order; the rounds alternate which side goes first.
    durations = iter([3.0, 1.0, 0.5, 6.0, 3.0, 1.5, 1.0, 2.0])
    monkeypatch.setattr(benchmark, "seconds", lambda fn: (fn(), next(durations))[1])
    out = benchmark.interleaved_ratio(lambda: calls.append("reference"), lambda: calls.append("candidate"), rounds=4)
    assert calls == ["reference", "candidate", "candidate", "reference"] * 2
    assert out["rounds"] == [3.0, 12.0, 2.0, 2.0]
    assert (out["median"], out["min"], out["max"]) == (2.5, 2.0, 12.0)
    assert out["reference_s"] == 3.0 and out["candidate_s"] == 1.0
