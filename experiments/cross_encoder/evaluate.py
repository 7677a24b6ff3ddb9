"""`evaluate`: pair classification with calibration on the test split, then entity linking.

Pair metrics score the test pairs mined exactly as the training pairs were (positive, semantic-hard,
type and random negatives), which is the seed's protocol. Platt and temperature scaling are fitted on
the validation pairs and applied to the test pairs. Linking re-ranks each test mention's top
`rerank_top_k` bi-encoder candidates with the cross-encoder and compares accuracy at 1 and 5 with the
bi-encoder's own order; a mention whose gold concept was not retrieved counts as a miss for both.
"""

from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from experiments.cross_encoder import model as cross
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.mining import KINDS, Pair, read_candidates, read_pairs
from experiments.cross_encoder.prepare import read_mentions
from experiments.cross_encoder.retrieval import read_names
from experiments.cross_encoder.train import EXPORT_DIR
from medrepro import atomic, bootstrap, checkpoint, plots
from medrepro.calibration import Scaler, fit_scaler, sigmoid
from medrepro.device import default_device
from medrepro.errors import CheckpointError, DataError
from medrepro.metrics import binary_metrics
from medrepro.results import Evaluation

SCALERS = ("platt", "temperature")
# metrics.json: the headline under the suite's short names (intervals are in details.json).
HEADLINE = {"f1": "f1", "auc": "roc_auc", "pr_auc": "pr_auc", "ece": "ece", "brier": "brier",
            "acc1": "linking/acc_at_1", "bi_acc1": "linking/biencoder_acc_at_1"}


def _labels_logits(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                   split: str) -> tuple[list[Pair], np.ndarray, np.ndarray]:
    pairs = read_pairs(cfg.paths.mined, split)
    logits = cross.pair_logits(model, tokenizer, [(p.text, p.name) for p in pairs], cfg.eval.batch_size,
                               cfg.max_length)
    return pairs, np.array([p.label for p in pairs]), logits


def linking(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
            scaler: Scaler) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy at 1 and 5 of the bi-encoder order and of the re-ranked order over the linkable test
    mentions, and the pipeline figures on the re-ranked top candidate's calibrated probability.
    Returns the metrics and the per-mention hit@1 of the re-ranked order (for a bootstrap)."""
    mentions = read_mentions(cfg.paths.prepared)
    cands = read_candidates(cfg.paths.mined)
    names = [row["name"] for row in read_names(cfg.paths.index)]
    k = cfg.eval.rerank_top_k
    test = [i for i, m in enumerate(mentions) if m.split == "test" and cands["gold"][i] >= 0]
    if not test:
        raise DataError("no test mention resolves to a loaded concept: see prepared/missing.json")
    concepts, rows = cands["concepts"][test, :k], cands["rows"][test, :k]
    valid = concepts >= 0
    pairs = [(mentions[i].text, names[r]) for i, rs, ok in zip(test, rows, valid, strict=True) for r in rs[ok]]
    flat = cross.pair_logits(model, tokenizer, pairs, cfg.eval.batch_size, cfg.max_length)
    logits = np.full(concepts.shape, -np.inf, dtype=np.float64)
    logits[valid] = flat
    gold = cands["gold"][test]

    reranked = np.take_along_axis(concepts, np.argsort(-logits, axis=1, kind="stable"), axis=1)
    bi_hits = concepts == gold[:, None]
    cross_hits = reranked == gold[:, None]
    prob = np.sort(np.where(valid, scaler(np.where(valid, logits, 0.0)), 0.0), axis=1)[:, ::-1]
    second = prob[:, 1] if prob.shape[1] > 1 else np.zeros(len(prob))
    confident = prob[:, 0] >= cfg.eval.high_confidence
    result = {
        "mentions": float(len(test)),
        f"recall_at_{k}": float(bi_hits.any(axis=1).mean()),
        "biencoder_acc_at_1": float(bi_hits[:, :1].any(axis=1).mean()),
        "biencoder_acc_at_5": float(bi_hits[:, :5].any(axis=1).mean()),
        "acc_at_1": float(cross_hits[:, :1].any(axis=1).mean()),
        "acc_at_5": float(cross_hits[:, :5].any(axis=1).mean()),
        "high_confidence_share": float(confident.mean()),
        "mean_top_score": float(prob[:, 0].mean()),
        "mean_margin": float((prob[:, 0] - second).mean()),
    }
    if confident.any():
        result["high_confidence_acc_at_1"] = float(cross_hits[confident, 0].mean())
    return result, cross_hits[:, 0].astype(float)


def evaluate(cfg: CrossEncoderConfig, variant: str, run: Path, out: Path, which: str = "best") -> Evaluation:
    """Evaluate the exported best checkpoint (`which="best"`) or a checkpoint file of the run."""
    if which == "best":
        model, tokenizer = cross.load(run / EXPORT_DIR)
    else:
        model, tokenizer = cross.load(cfg.cross_encoder.path)
        saved = checkpoint.load(which)
        checkpoint.check_variant(saved, variant, which)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{which} does not hold this cross-encoder's weights: "
                                  f"{str(e).splitlines()[0][:200]}") from None
    model.to(default_device())
    _, y_dev, z_dev = _labels_logits(cfg, model, tokenizer, "dev")
    test_pairs, y_test, z_test = _labels_logits(cfg, model, tokenizer, "test")
    scalers = {name: fit_scaler(name, z_dev, y_dev) for name in SCALERS}
    p_test = sigmoid(z_test)
    raw = binary_metrics(y_test, p_test, cfg.eval.threshold, cfg.eval.calibration_bins)
    calibrated = {name: binary_metrics(y_test, s(z_test), cfg.eval.threshold, cfg.eval.calibration_bins)
                  for name, s in scalers.items()}
    f1 = bootstrap.bootstrap(bootstrap.f1_binary_stat(y_test, p_test >= cfg.eval.threshold), len(y_test),
                             cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)
    kinds = np.array([p.kind for p in test_pairs])
    # Per kind of pair, the share classified correctly: recall on positives, rejection rate on negatives.
    by_kind = {kind: float(((p_test >= cfg.eval.threshold) == (y_test == 1))[kinds == kind].mean())
               for kind in KINDS if (kinds == kind).any()}

    chosen = scalers[cfg.eval.calibration] if cfg.eval.calibration != "none" else Scaler()
    link, hits = linking(cfg, model, tokenizer, chosen)
    acc1 = bootstrap.bootstrap(bootstrap.mean_stat(hits), len(hits), cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)

    plot_dir = out / "plots"
    plots.reliability_png(y_test, {"uncalibrated": p_test, **{n: s(z_test) for n, s in scalers.items()}},
                          plot_dir / "reliability.png", "cross-encoder reliability (test pairs)",
                          cfg.eval.calibration_bins)
    plots.roc_png(y_test, p_test, plot_dir / "roc.png", "cross-encoder ROC (test pairs)")
    plots.pr_png(y_test, p_test, plot_dir / "pr.png", "cross-encoder precision-recall (test pairs)")
    plots.per_class_png({"acc@1": {"bi-encoder": link["biencoder_acc_at_1"], "re-ranked": link["acc_at_1"]},
                         "acc@5": {"bi-encoder": link["biencoder_acc_at_5"], "re-ranked": link["acc_at_5"]}},
                        plot_dir / "linking.png", f"linking accuracy, {int(link['mentions'])} test mentions")

    metrics = {**raw, "f1_ci_low": f1.low, "f1_ci_high": f1.high,
               **{f"{name}/{key}": m[key] for name, m in calibrated.items()
                  for key in ("ece", "mce", "brier", "f1", "accuracy")},
               **{f"pairs/{kind}_correct": v for kind, v in by_kind.items()},
               **{f"linking/{key}": v for key, v in link.items()},
               "linking/acc_at_1_ci_low": acc1.low, "linking/acc_at_1_ci_high": acc1.high}
    atomic.write_json(out / "calibration.json", {
        "fitted_on": "dev pairs", "default": cfg.eval.calibration,
        **{name: {"a": s.a, "b": s.b, "temperature": s.temperature} for name, s in scalers.items()}})
    atomic.write_json(out / "evaluation_results.json", {
        "test_pairs": {"uncalibrated": raw, **calibrated, "by_kind": by_kind,
                       "f1_ci": [f1.low, f1.high], "threshold": cfg.eval.threshold,
                       "calibration": {"bins": cfg.eval.calibration_bins, "binning": "equal-width on P(positive)",
                                       "ece": "bin-weighted mean |fraction positive - mean probability|",
                                       "mce": "max over non-empty bins"}},
        "linking": {**link, "rerank_top_k": cfg.eval.rerank_top_k, "calibration": cfg.eval.calibration,
                    "acc_at_1_ci": [acc1.low, acc1.high]},
    })
    info = {"data": cfg.data.source, "model": str(run / EXPORT_DIR) if which == "best" else str(which),
            "start": cfg.cross_encoder.path,
            "protocol": f"mined test pairs; re-rank top {cfg.eval.rerank_top_k} candidates"}
    return Evaluation({short: metrics[name] for short, name in HEADLINE.items()}, metrics, info)
