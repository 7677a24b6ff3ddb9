"""`evaluate`: pair classification with calibration on the test split, then entity linking.

Pair metrics score the test pairs mined exactly as the training pairs were (positive, semantic-hard,
type and random negatives), which is the seed's protocol, beside what a scorer that learned nothing
gets on the same pairs (`baseline/*`: "match" for every pair, a constant score). The scalers come with
the exported model: fitted on the calibration half of dev, which neither trained the model nor picked
its checkpoint. Calibration is reported with 15 equal-width bins (with each bin's count) and with
equal-mass bins (adaptive ECE), on the test pairs and on the linking top-1 probabilities.

Linking re-ranks each test mention's top `rerank_top_k` bi-encoder candidates and compares acc@1 and
acc@5 of three orders: the retriever's, the cross-encoder's alone, and the combined score (see
scoring.py), with paired intervals of the differences; a mention whose gold concept was not retrieved
is a miss for all. The same figures are reported for the ambiguous mentions alone (`ambiguous_*`:
their string names concepts of different semantic types), which only context and type can settle.
Every interval resamples documents (PMIDs) with all their mentions and pairs: an abstract's mentions
are not independent. The seed's before/after table compares the zero-shot cross-encoder (the starting
model with a fresh head) with the fine-tuned one on raw scores.
"""

from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import scoring
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.mining import KINDS, read_pairs
from experiments.cross_encoder.prepare import read_concepts, read_mentions
from experiments.cross_encoder.train import EXPORT_DIR
from medrepro import atomic, checkpoint, plots, repro
from medrepro.calibration import Scaler, adaptive_ece, reliability_bins, sigmoid
from medrepro.device import default_device
from medrepro.errors import CheckpointError
from medrepro.metrics import binary_metrics
from medrepro.results import Evaluation

# metrics.json: the headline under the suite's short names (intervals are in details.json).
HEADLINE = {"f1": "f1", "auc": "roc_auc", "pr_auc": "pr_auc", "ece": "ece", "brier": "brier",
            "acc1": "linking/reranked_acc_at_1", "bi_acc1": "linking/biencoder_acc_at_1"}
EXPORT_CHECK_PAIRS = 64  # test pairs whose calibrated probabilities are kept to check the export against


def _trained(cfg: CrossEncoderConfig, variant: str, run: Path, which: str,
             ) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The raw (unfolded) weights of the run's best checkpoint or of a named checkpoint file, in the
    architecture and with the tokenizer of the run's export (no hub download), else of the start model."""
    path = run / "checkpoints" / "best.pt" if which == "best" else Path(which)
    model, tokenizer = cross.load(run / EXPORT_DIR if (run / EXPORT_DIR).is_dir() else cfg.cross_encoder.path)
    saved = checkpoint.load(path)
    checkpoint.check_variant(saved, variant, str(path))
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not hold this cross-encoder's weights: "
                              f"{str(e).splitlines()[0][:200]}") from None
    return model, tokenizer


def pipeline_figures(candidates: scoring.Candidates, score: np.ndarray, prob: np.ndarray,
                     high_confidence: float) -> dict[str, float]:
    """The seed's pipeline figures over mentions: acc@1 of the order by `score`, and on the top
    candidate's probability `prob` the share at or above `high_confidence`, the mean, and the mean
    margin over the second candidate."""
    order = np.argsort(-score, axis=1, kind="stable")
    ranked = np.take_along_axis(np.where(candidates.valid, prob, 0.0), order, axis=1)
    second = ranked[:, 1] if ranked.shape[1] > 1 else np.zeros(len(ranked))
    hits = candidates.hits(score)[:, 0]
    confident = ranked[:, 0] >= high_confidence
    figures = {"acc_at_1": float(hits.mean()), "high_confidence_share": float(confident.mean()),
               "mean_top_score": float(ranked[:, 0].mean()), "mean_margin": float((ranked[:, 0] - second).mean())}
    if confident.any():  # undefined without a confident mapping (a zero-shot head has none)
        figures["high_confidence_acc_at_1"] = float(hits[confident].mean())
    return figures


def _calibration_report(y: np.ndarray, prob: np.ndarray, bins: int) -> dict:
    return {"ece_adaptive": adaptive_ece(y, prob, bins),
            "bins_equal_width": reliability_bins(y, prob, bins, "uniform"),
            "bins_equal_mass": reliability_bins(y, prob, bins, "quantile")}


def before_after(cfg: CrossEncoderConfig, tokenizer: PreTrainedTokenizerBase,
                 trained: scoring.Candidates) -> dict[str, dict[str, float]]:
    """The pipeline figures of the zero-shot cross-encoder (the starting model with a freshly
    initialised head, seeded as training seeds it) and of the fine-tuned one, both on raw σ(logit)
    and the cross-encoder's own order, as the seed reports them."""
    repro.seed_everything(cfg.seed, cfg.train.deterministic)
    zero_shot, _ = cross.load(cfg.cross_encoder.path)
    zero_shot.to(default_device())
    rows = {}
    for name, cands in (("zero_shot", scoring.score_candidates(cfg, zero_shot, tokenizer, "test")),
                        ("fine_tuned", trained)):
        rows[name] = pipeline_figures(cands, cands.cross, sigmoid(np.where(cands.valid, cands.cross, 0.0)),
                                      cfg.eval.high_confidence)
    return rows


def evaluate(cfg: CrossEncoderConfig, variant: str, run: Path, out: Path, which: str = "best") -> Evaluation:
    """Evaluate the run's best checkpoint (`which="best"`, with the calibration exported beside it) or a
    checkpoint file of the run (calibrated afresh on the calibration pairs)."""
    model, tokenizer = _trained(cfg, variant, run, which)
    model.to(default_device())
    calibration = (scoring.read_calibration(run / EXPORT_DIR / scoring.CALIBRATION_FILE) if which == "best"
                   else scoring.fit_calibration(cfg, model, tokenizer))
    scalers = {name: scoring.scaler_of(calibration, name) for name in scoring.SCALERS}
    bins, e = cfg.eval.calibration_bins, cfg.eval

    test_pairs = read_pairs(cfg.paths.mined, "test")
    mentions = read_mentions(cfg.paths.prepared)
    z_test = cross.pair_logits(model, tokenizer, [p.inputs for p in test_pairs], e.batch_size, cfg.max_length)
    y_test = np.array([p.label for p in test_pairs])
    p_test = sigmoid(z_test)
    raw = binary_metrics(y_test, p_test, e.threshold, bins)
    calibrated = {name: binary_metrics(y_test, s(z_test), e.threshold, bins) for name, s in scalers.items()}
    pair_docs = scoring.pair_documents(test_pairs, mentions)
    f1 = scoring.f1_by_document(y_test, p_test >= e.threshold, pair_docs, e.bootstrap, e.alpha, cfg.seed)
    baselines, n_documents = scoring.pair_baselines(y_test), len(np.unique(pair_docs))
    kinds = np.array([p.kind for p in test_pairs])
    # Per kind of pair, the share classified correctly: recall on positives, rejection rate on negatives.
    by_kind = {kind: float(((p_test >= e.threshold) == (y_test == 1))[kinds == kind].mean())
               for kind in KINDS if (kinds == kind).any()}

    candidates = scoring.score_candidates(cfg, model, tokenizer, "test")
    weight = calibration["retrieval_weight"]
    link = scoring.linking_accuracy(candidates, weight, e.bootstrap, e.alpha, cfg.seed)
    ambiguous = scoring.ambiguous([mentions[i].text for i in candidates.mentions], read_concepts(cfg.paths.prepared))
    if ambiguous.any():
        # Mentions whose string names concepts of different types: what context and type must settle.
        shown = scoring.linking_accuracy(candidates.subset(ambiguous), weight, e.bootstrap, e.alpha, cfg.seed)
        link |= {f"ambiguous_{key}": value for key, value in shown.items()
                 if key in ("mentions", "documents") or "acc_at_1" in key or "minus_biencoder" in key}
    chosen = scalers[e.calibration] if e.calibration != "none" else Scaler()
    combined = candidates.combined(weight)
    prob = chosen(np.where(candidates.valid, candidates.cross, 0.0))
    link |= {f"pipeline_{k}": v for k, v in pipeline_figures(candidates, combined, prob, e.high_confidence).items()
             if k != "acc_at_1"}
    # Linking calibration: is the top candidate's probability the chance that it is the gold concept?
    top = np.argsort(-combined, axis=1, kind="stable")[:, 0]
    top_prob = prob[np.arange(len(top)), top]
    top_hit = candidates.hits(combined)[:, 0].astype(int)
    top1_cal = {**binary_metrics(top_hit, top_prob, e.threshold, bins), **_calibration_report(top_hit, top_prob, bins)}
    link |= {"top1_ece": top1_cal["ece"], "top1_ece_adaptive": top1_cal["ece_adaptive"]}
    table = before_after(cfg, tokenizer, candidates)

    plot_dir = out / "plots"
    plots.reliability_png(y_test, {"uncalibrated": p_test, **{n: s(z_test) for n, s in scalers.items()}},
                          plot_dir / "reliability.png", "cross-encoder reliability (test pairs)", bins)
    plots.roc_png(y_test, p_test, plot_dir / "roc.png", "cross-encoder ROC (test pairs)")
    plots.pr_png(y_test, p_test, plot_dir / "pr.png", "cross-encoder precision-recall (test pairs)")
    orders = {"biencoder": "bi-encoder", "cross_only": "cross-encoder alone", "reranked": "re-ranked (combined)"}
    groups = {f"acc@{k}": {f"{label}{suffix}": link[f"{name}_acc_at_{k}{suffix}"]
                           for name, label in orders.items() for suffix in ("", "_ci_low", "_ci_high")}
              for k in (1, 5)}
    if ambiguous.any():
        groups["acc@1*"] = {
            f"{label}{suffix}": link[f"ambiguous_{name}_acc_at_1{suffix}"]
            for name, label in orders.items() for suffix in ("", "_ci_low", "_ci_high")}
    plots.per_class_png(groups,
                        plot_dir / "linking.png",
                        f"linking accuracy, {int(link['mentions'])} test mentions (95 % intervals by document)",
                        caption=(f"* the {int(ambiguous.sum())} mentions whose string names concepts of different "
                                 "semantic types" if ambiguous.any() else ""),
                        ylabel="share of mentions", xlabel="gold concept among the top k")

    metrics = {**raw, "f1_ci_low": f1.low, "f1_ci_high": f1.high, "n_documents": float(n_documents),
               **baselines,
               "ece_adaptive": adaptive_ece(y_test, p_test, bins),
               **{f"{name}/{key}": m[key] for name, m in calibrated.items()
                  for key in ("ece", "mce", "brier", "f1", "accuracy")},
               **{f"{name}/ece_adaptive": adaptive_ece(y_test, s(z_test), bins) for name, s in scalers.items()},
               **{f"pairs/{kind}_correct": v for kind, v in by_kind.items()},
               **{f"linking/{key}": v for key, v in link.items()},
               **{f"{row}/{key}": v for row, figures in table.items() for key, v in figures.items()}}
    check = [{"first": p.inputs[0], "second": p.inputs[1], "probability": float(q)}
             for p, q in zip(test_pairs[:EXPORT_CHECK_PAIRS], scalers["platt"](z_test[:EXPORT_CHECK_PAIRS]),
                             strict=True)]
    atomic.write_json(out / "calibration.json", calibration)
    atomic.write_json(out / "evaluation_results.json", {
        "test_pairs": {"uncalibrated": {**raw, **_calibration_report(y_test, p_test, bins)},
                       **{n: {**calibrated[n], **_calibration_report(y_test, s(z_test), bins)}
                          for n, s in scalers.items()},
                       "by_kind": by_kind, "f1_ci": [f1.low, f1.high], "f1_ci_unit": "document",
                       "documents": n_documents, "baselines": baselines,
                       "threshold": e.threshold,
                       "calibration": {"bins": bins, "fitted_on": calibration["fitted_on"],
                                       "ece": "bin-weighted mean |fraction positive - mean probability|, "
                                              "equal-width bins on P(positive)",
                                       "ece_adaptive": "the same over equal-mass bins",
                                       "mce": "max over non-empty equal-width bins"}},
        "linking": {**link, "rerank_top_k": e.rerank_top_k, "calibration": e.calibration,
                    "ci_unit": "document", "top1_calibration": top1_cal},
        "before_after": {**table, "scores": "raw sigmoid of the logit, cross-encoder order"},
        "export_check": {"scaler": "platt", "pairs": check},
    })
    info = {"data": cfg.data.source, "model": str(run / EXPORT_DIR) if which == "best" else str(which),
            "start": cfg.cross_encoder.path,
            "protocol": f"mined test pairs; re-rank top {e.rerank_top_k} candidates by cross-encoder logit + "
                        f"{weight:g} × bi-encoder cosine"}
    return Evaluation({short: metrics[name] for short, name in HEADLINE.items()}, metrics, info)
