import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from medrepro.bootstrap import (
    Interval,
    accuracy_stat,
    auc_stat,
    balanced_accuracy_stat,
    bootstrap,
    bootstrap_clusters,
    f1_macro_stat,
    mean_stat,
    resample_indices,
)

N = 120
K = 4


@pytest.fixture
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    # Class 3 occurs once in y_true so that some resamples miss it entirely.
    y_true = rng.choice(K - 1, size=N, p=[0.4, 0.3, 0.3])
    y_true[0] = K - 1
    y_pred = np.where(rng.random(N) < 0.7, y_true, rng.integers(0, K, size=N))
    return y_true, y_pred


@pytest.fixture
def binary() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    y = (rng.random(N) < 0.3).astype(int)
    # Rounding creates many tied scores, which the rank-based AUC must average like sklearn.
    score = np.round(rng.random(N) + 0.4 * y, 1)
    return y, score


def rows_to_check() -> np.ndarray:
    return np.concatenate([np.arange(N)[None], resample_indices(N, 8, seed=11)])


def test_accuracy_stat_matches_sklearn(labels):
    y_true, y_pred = labels
    idx = rows_to_check()
    got = accuracy_stat(y_true, y_pred)(idx)
    expected = [accuracy_score(y_true[row], y_pred[row]) for row in idx]
    np.testing.assert_allclose(got, expected)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_stat_matches_sklearn(labels):
    y_true, y_pred = labels
    idx = rows_to_check()
    assert not (y_true[idx] == K - 1).any(axis=1).all()
    got = balanced_accuracy_stat(y_true, y_pred, K)(idx)
    expected = [balanced_accuracy_score(y_true[row], y_pred[row]) for row in idx]
    np.testing.assert_allclose(got, expected)


def test_f1_macro_stat_matches_sklearn(labels):
    y_true, y_pred = labels
    idx = rows_to_check()
    got = f1_macro_stat(y_true, y_pred, K)(idx)
    expected = [
        f1_score(y_true[row], y_pred[row], labels=range(K), average="macro", zero_division=0) for row in idx
    ]
    np.testing.assert_allclose(got, expected)


def test_auc_stat_matches_sklearn_with_ties(binary):
    y, score = binary
    idx = rows_to_check()
    got = auc_stat(y, score)(idx)
    expected = [roc_auc_score(y[row], score[row]) for row in idx]
    np.testing.assert_allclose(got, expected)


def test_auc_stat_is_nan_without_both_classes():
    y = np.array([0, 0, 1, 1])
    stat = auc_stat(y, np.array([0.1, 0.4, 0.35, 0.8]))
    got = stat(np.array([[0, 1, 0, 1], [2, 3, 3, 2], [0, 1, 2, 3]]))
    assert np.isnan(got[0]) and np.isnan(got[1])
    assert got[2] == pytest.approx(0.75)


def test_interval_is_reproducible_and_contains_estimate(labels):
    y_true, y_pred = labels
    stat = f1_macro_stat(y_true, y_pred, K)
    first = bootstrap(stat, N, n_boot=300, seed=5)
    assert first == bootstrap(stat, N, n_boot=300, seed=5)
    assert first != bootstrap(stat, N, n_boot=300, seed=6)
    assert isinstance(first, Interval)
    assert first.low < first.estimate < first.high
    assert first.n_valid == 300
    assert first.estimate == pytest.approx(
        f1_score(y_true, y_pred, labels=range(K), average="macro", zero_division=0)
    )


def test_nan_rows_are_dropped_and_counted():
    y = np.zeros(10, dtype=int)
    y[0] = 1
    score = np.linspace(0, 1, 10)
    interval = bootstrap(auc_stat(y, score), 10, n_boot=400, seed=3)
    has_positive = (resample_indices(10, 400, seed=3) == 0).any(axis=1)
    assert 0 < interval.n_valid < 400
    assert interval.n_valid == int(has_positive.sum())
    assert np.isfinite([interval.low, interval.high]).all()


def test_no_valid_resample_gives_nan_bounds():
    interval = bootstrap(lambda idx: np.full(len(idx), np.nan), 5, n_boot=20)
    assert interval.n_valid == 0
    assert np.isnan(interval.low) and np.isnan(interval.high)


def test_chunking_gives_identical_results(binary):
    y, score = binary
    calls: list[tuple[int, int]] = []

    def stat(idx):
        calls.append(idx.shape)
        return auc_stat(y, score)(idx)

    whole = bootstrap(stat, N, n_boot=250, seed=9)
    assert calls[1:] == [(250, N)]
    calls.clear()
    chunked = bootstrap(stat, N, n_boot=250, seed=9, max_elements=N * 7)
    assert chunked == whole
    assert [rows for rows, _ in calls[1:]] == [7] * 35 + [5]


def test_bootstrap_validates_arguments():
    stat = accuracy_stat(np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap(stat, 2, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap(stat, 2, n_boot=0)
    with pytest.raises(ValueError, match="shape"):
        bootstrap(lambda idx: np.zeros(3), 2)


def test_stats_validate_inputs():
    with pytest.raises(ValueError, match="equal lengths"):
        accuracy_stat(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="outside"):
        f1_macro_stat(np.array([0, 5]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="0/1"):
        auc_stat(np.array([0, 2]), np.array([0.1, 0.2]))


def test_clusters_of_one_sample_are_the_plain_bootstrap(labels):
    y_true, y_pred = labels
    stat = accuracy_stat(y_true, y_pred)
    plain = bootstrap(stat, len(y_true), n_boot=300, seed=4)
    assert bootstrap_clusters(stat, np.arange(len(y_true)), n_boot=300, seed=4) == plain


def test_resamples_keep_whole_clusters():
    clusters = np.repeat(np.arange(30), 2)  # samples 2k and 2k+1 form cluster k

    def whole(idx):
        counts = np.stack([np.bincount(row, minlength=60) for row in idx])
        return (counts[:, ::2] == counts[:, 1::2]).all(axis=1).astype(float)

    interval = bootstrap_clusters(whole, clusters, n_boot=200, seed=1)
    assert interval.low == interval.high == 1.0


def test_duplicated_samples_do_not_narrow_the_cluster_interval():
    """Both eyes of a patient alike: resampling eyes would halve the variance; patients do not."""
    rng = np.random.default_rng(0)
    correct = (rng.random(80) < 0.6).astype(int)
    eyes = np.repeat(correct, 2)
    stat_one, stat_two = accuracy_stat(correct, np.ones(80, int)), accuracy_stat(eyes, np.ones(160, int))
    patients = bootstrap(stat_one, 80, n_boot=2000, seed=2)
    clustered = bootstrap_clusters(stat_two, np.repeat(np.arange(80), 2), n_boot=2000, seed=2)
    naive = bootstrap(stat_two, 160, n_boot=2000, seed=2)
    assert clustered.high - clustered.low == pytest.approx(patients.high - patients.low, rel=0.15)
    assert naive.high - naive.low < 0.85 * (clustered.high - clustered.low)


def test_cluster_sizes_may_differ_and_labels_may_be_any_ids():
    clusters = np.array(["a", "b", "b", "c", "c", "c"])
    values = np.arange(6, dtype=float)
    interval = bootstrap_clusters(mean_stat(values), clusters, n_boot=100, seed=0)
    assert interval.estimate == pytest.approx(2.5) and 0 <= interval.low <= interval.high <= 5
    with pytest.raises(ValueError):
        bootstrap_clusters(mean_stat(values), np.array([]), n_boot=10)
