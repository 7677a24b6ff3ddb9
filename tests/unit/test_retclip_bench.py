"""The arithmetic of retclip's benchmark: the best-of repeats."""

from experiments.retclip.bench import best_of


def test_best_of_keeps_the_smallest_and_stops_once_the_budget_is_spent():
    times = iter([3.0, 1.0, 2.0, 0.5])
    assert best_of(lambda: next(times), repeats=3) == 1.0
    calls = []
    assert best_of(lambda: calls.append(1) or 6.0, repeats=3, budget_s=10.0) == 6.0
    assert len(calls) == 2
