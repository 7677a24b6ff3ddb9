"""Random Forest and XGBoost on the features the transformer sees: a bag of the codes of the (truncated)
sequence, age at the last visit, and one-hot sex and state."""

import numpy as np
from scipy import sparse
from sklearn.ensemble import RandomForestClassifier
from xgboost import XGBClassifier

from experiments.exmed_bert import dataset
from experiments.exmed_bert.config import BaselineConfig

# A fitted baseline's run directory holds its validation and test scores (no pickled model).
SCORES = "scores.json"


def features(records: list[dict], vocab: dataset.Vocab) -> sparse.csr_matrix:
    n_codes = len(vocab.tokens)
    rows, cols = [], []
    for row, r in enumerate(records):
        codes = [t for t, kind in zip(r["tokens"], r["types"], strict=True) if kind != 0]
        rows += [row] * len(codes)
        cols += codes
    bag = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(records), n_codes))
    age = sparse.csr_matrix(np.array([[max(r["ages"])] for r in records], dtype=float))
    sex = sparse.csr_matrix(np.eye(len(vocab.sexes))[[r["sex"] for r in records]])
    state = sparse.csr_matrix(np.eye(len(vocab.states))[[r["state"] for r in records]])
    return sparse.hstack([bag, age, sex, state], format="csr")


def fit_predict(name: str, cfg: BaselineConfig, seed: int, train: sparse.csr_matrix, labels: np.ndarray,
                score: dict[str, sparse.csr_matrix]) -> tuple[dict[str, np.ndarray], object]:
    """Fit `random_forest` or `xgboost` with balanced classes; positive-class probabilities per named set."""
    if name == "random_forest":
        model = RandomForestClassifier(cfg.rf_trees, max_depth=cfg.rf_max_depth or None, class_weight="balanced",
                                       random_state=seed, n_jobs=1)
    elif name == "xgboost":
        positive_weight = float((labels == 0).sum() / max(1, (labels == 1).sum()))
        model = XGBClassifier(n_estimators=cfg.xgb_trees, max_depth=cfg.xgb_max_depth,
                              learning_rate=cfg.xgb_learning_rate, scale_pos_weight=positive_weight,
                              random_state=seed, n_jobs=1, tree_method="exact")
    else:
        raise ValueError(f"unknown baseline {name!r}")
    model.fit(train, labels)
    return {k: model.predict_proba(x)[:, 1].astype(np.float64) for k, x in score.items()}, model
