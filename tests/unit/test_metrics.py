import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medrepro.metrics import classification_metrics, confusion

NAMES = ["normal", "dr", "amd", "glaucoma"]
LABELS = list(range(len(NAMES)))


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Class 3 never occurs in y_true but is sometimes predicted: the awkward case.
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, size=200))
    y_score = rng.dirichlet(np.ones(4), size=200)
    y_score[np.arange(200), y_true] += 0.3
    return y_true, y_pred, y_score


def test_overall_metrics_match_sklearn(data):
    y_true, y_pred, _ = data
    m = classification_metrics(y_true, y_pred, NAMES)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected_balanced = balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_balanced)
    for average in ("macro", "weighted"):
        expected = f1_score(y_true, y_pred, labels=LABELS, average=average, zero_division=0)
        assert m[f"f1_{average}"] == pytest.approx(expected)
    assert m["precision_macro"] == pytest.approx(
        precision_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
    )
    assert m["recall_macro"] == pytest.approx(
        recall_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)
    )
    assert all(isinstance(v, float) for v in m.values())


def test_per_class_metrics_keep_absent_class_in_place(data):
    y_true, y_pred, _ = data
    m = classification_metrics(y_true, y_pred, NAMES)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=LABELS, zero_division=0)
    for k, name in enumerate(NAMES):
        assert m[f"precision/{name}"] == pytest.approx(p[k])
        assert m[f"recall/{name}"] == pytest.approx(r[k])
        assert m[f"f1/{name}"] == pytest.approx(f[k])
        assert m[f"support/{name}"] == s[k]
    assert m["support/glaucoma"] == 0.0
    assert not any(key.startswith("auroc") for key in m)


def test_auc_only_for_classes_with_both_labels(data):
    y_true, y_pred, y_score = data
    m = classification_metrics(y_true, y_pred, NAMES, y_score=y_score)
    auc_keys = sorted(key for key in m if key.startswith("auroc/"))
    assert auc_keys == ["auroc/amd", "auroc/dr", "auroc/normal"]
    for k, name in enumerate(NAMES[:3]):
        assert m[f"auroc/{name}"] == pytest.approx(roc_auc_score(y_true == k, y_score[:, k]))
    assert m["auroc_macro"] == pytest.approx(np.mean([m[key] for key in auc_keys]))


def test_no_auc_macro_when_no_class_has_both_labels():
    y = np.zeros(5, dtype=int)
    m = classification_metrics(y, y, ["a", "b"], y_score=np.full((5, 2), 0.5))
    assert not any(key.startswith("auroc") for key in m)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "y_score", "match"),
    [
        ([0, 1, 1], [0, 1], None, "samples"),
        ([0, 1, 4], [0, 1, 1], None, "outside"),
        ([0.0, 1.0], [0, 1], None, "integer"),
        ([0, 1], [0, 1], np.zeros((2, 3)), "shape"),
        ([0, 1], [0, 1], np.array([[0.1, np.nan], [0.2, 0.3]]), "NaN"),
        ([], [], None, "at least one"),
    ],
)
def test_bad_input_raises_value_error(y_true, y_pred, y_score, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.asarray(y_true), np.asarray(y_pred), ["a", "b"], y_score=y_score)


def test_duplicate_class_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "a"])


def test_confusion_matches_sklearn_with_absent_class(data):
    y_true, y_pred, _ = data
    cm = confusion(y_true, y_pred, 4)
    assert cm.shape == (4, 4)
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, labels=LABELS))
    assert cm[3].sum() == 0
    np.testing.assert_array_equal(cm.sum(axis=1)[:3], np.bincount(y_true, minlength=3))


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([0, 2]), np.array([0, 1]), 2)
