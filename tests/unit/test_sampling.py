"""Batch order keyed by (seed, epoch): identical over world sizes, accumulation and resumes."""

import pytest

from medrepro.sampling import StepBatchSampler, steps_per_epoch


def sampler(n=50, batch=8, accum=1, rank=0, world=1, seed=3, epoch=1, start=0, shuffle=True):
    return StepBatchSampler(n, batch, accum, rank, world, seed, epoch, start, shuffle)


def global_batches(n=50, batch=8, accum=1, world=1, seed=3, epoch=1, start=0):
    """Reassemble each optimizer step's global batch from every rank's micro-batches."""
    per_rank = [list(sampler(n, batch, accum, r, world, seed, epoch, start)) for r in range(world)]
    steps = len(per_rank[0]) // accum
    assert all(len(chunks) == steps * accum for chunks in per_rank)
    out = []
    for step in range(steps):
        batch_indices = []
        for a in range(accum):
            for r in range(world):
                batch_indices += per_rank[r][step * accum + a]
        out.append(batch_indices)
    return out


@pytest.mark.parametrize(("accum", "world"), [(2, 2), (1, 4), (4, 1), (2, 1), (1, 2)])
def test_ranks_and_micro_steps_recompose_the_single_process_batch(accum, world):
    single = list(sampler())
    assert global_batches(accum=accum, world=world) == single


def test_micro_batch_size_and_disjoint_ranks():
    r0 = list(sampler(accum=2, rank=0, world=2))
    r1 = list(sampler(accum=2, rank=1, world=2))
    assert all(len(chunk) == 2 for chunk in r0 + r1)
    assert not {i for c in r0 for i in c} & {i for c in r1 for i in c}


def test_start_step_skips_exactly_the_first_global_batches():
    full = list(sampler())
    for start in (1, 2, 5):
        assert list(sampler(start=start)) == full[start:]
        assert global_batches(accum=2, world=2, start=start) == full[start:]


def test_start_step_past_the_end_yields_nothing():
    s = sampler(start=10)
    assert list(s) == [] and len(s) == 0


def test_same_seed_and_epoch_same_order():
    assert list(sampler(seed=5, epoch=2)) == list(sampler(seed=5, epoch=2))


def test_different_epoch_or_seed_different_order():
    base = list(sampler(seed=5, epoch=2))
    assert list(sampler(seed=5, epoch=3)) != base
    assert list(sampler(seed=6, epoch=2)) != base


def test_epoch_is_a_permutation_with_incomplete_last_batch_dropped():
    batches = list(sampler(n=50, batch=8))
    assert len(batches) == 6 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 48 and set(flat) <= set(range(50))


def test_exact_multiple_covers_every_sample():
    flat = [i for b in sampler(n=48, batch=8) for i in b]
    assert sorted(flat) == list(range(48))


def test_no_shuffle_is_in_order():
    assert list(sampler(n=10, batch=4, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(("batch", "accum", "world"), [(10, 2, 3), (8, 3, 1), (4, 8, 1), (6, 1, 4)])
def test_batch_not_divisible_by_accum_times_world(batch, accum, world):
    with pytest.raises(ValueError, match="multiple"):
        StepBatchSampler(100, batch, accum, 0, world, 0, 0)


@pytest.mark.parametrize(("accum", "world", "start"), [(1, 1, 0), (2, 2, 0), (2, 2, 4), (4, 2, 1)])
def test_len_matches_iteration(accum, world, start):
    s = sampler(n=50, batch=8, accum=accum, world=world, start=start)
    assert len(s) == len(list(s)) == (6 - start) * accum


def test_steps_per_epoch():
    assert steps_per_epoch(50, 8) == 6
    assert steps_per_epoch(48, 8) == 6
    assert steps_per_epoch(7, 8) == 0
