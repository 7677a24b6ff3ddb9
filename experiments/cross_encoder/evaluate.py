"""`evaluate`: calibration of the checkpoint, pair classification on the test split, then entity linking.

The checkpoint is calibrated first (`scoring.fit_calibration`): Platt and temperature scalers and the
retrieval weight, fitted on the calibration half of dev, which neither trained the model nor picked
its checkpoint; `calibration.json` beside the results keeps them. `export` fits the same calibration of
the same checkpoint and folds Platt into the exported model, whose probabilities `export_check` in
evaluation_results.json lists for the first test pairs.

Pair metrics score the test pairs mined exactly as the training pairs were (positive, semantic-hard,
type and random negatives), which is the seed's protocol, beside what a scorer that learned nothing
gets on the same pairs (`baseline/*`: "match" for every pair, a constant score). Calibration is
reported with 15 equal-width bins (with each bin's count) and with equal-mass bins (adaptive ECE), on
the test pairs and on the linking top-1 probabilities.

Linking re-ranks each test mention's top `rerank_top_k` bi-encoder candidates and compares acc@1 and
acc@5 of three orders: the retriever's, the cross-encoder's alone, and the combined score (see
scoring.py), with paired intervals of the differences; a mention whose gold concept was not retrieved
is a miss for all. The same figures are reported for the ambiguous mentions alone (`ambiguous_*`:
their string names concepts of different semantic types), which only context and type can settle.
Every interval resamples documents (PMIDs) with all their mentions and pairs: an abstract's mentions
are not independent. The seed's before/after table compares the zero-shot cross-encoder (the starting
model with a fresh head) with the fine-tuned one on raw scores.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import pair_text, scoring
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.layout import CALIBRATION_FILE, EVALUATION_FILE
from experiments.cross_encoder.readers import read_concepts, read_mentions, read_pairs
from experiments.cross_encoder.records import KINDS, MentionRecord, Pair
from medrepro import atomic, bootstrap, plots, repro
from medrepro.calibration import Scaler, adaptive_ece, reliability_bins, sigmoid
from medrepro.device import default_device
from medrepro.metrics import binary_metrics
from medrepro.results import Evaluation
from medrepro.rundir import RunDir

# metrics.json: the headline under the suite's short names (intervals, and the bi-encoder's acc@1 that
# re-ranking is measured against, are in details.json).
HEADLINE = {"f1": "f1", "auc": "roc_auc", "pr_auc": "pr_auc", "ece": "ece", "brier": "brier",
            "acc1": "linking/reranked_acc_at_1"}
EXPORT_CHECK_PAIRS = 64  # test pairs whose calibrated probabilities are kept to check the export against
# The three linking orders as the plots label them.
ORDERS = {"biencoder": "bi-encoder", "cross_only": "cross-encoder alone", "reranked": "re-ranked (combined)"}


@dataclass
class PairFigures:
    """The test pairs scored: raw σ(logit) and each scaler's probabilities against the labels."""

    labels: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray  # raw σ(logit)
    raw: dict[str, float]  # binary_metrics of the raw probabilities
    calibrated: dict[str, dict[str, float]]  # binary_metrics per scaler
    f1: bootstrap.Interval  # of the raw predictions, resampling documents
    baselines: dict[str, float]
    documents: int
    by_kind: dict[str, float]  # per kind of pair, the share classified correctly


@dataclass
class LinkingFigures:
    """The test mentions' candidates re-ranked, and what linking reports of them."""

    candidates: scoring.Candidates
    ambiguous: np.ndarray  # per linked mention: its string names concepts of different semantic types
    figures: dict[str, float]  # accuracy of the three orders, on all and on the ambiguous mentions, pipeline
    top1_calibration: dict  # the top candidate's probability against "it is the gold concept"


def evaluate(cfg: CrossEncoderConfig, variant: str, run: RunDir, out_dir: Path, which: str = "best") -> Evaluation:
    """Calibrate and evaluate checkpoint `which` of `run` (`best`, `final` or a checkpoint path)."""
    model, tokenizer = cross.load_trained(cfg.cross_encoder.path, run, which, variant)
    calibration = scoring.fit_calibration(cfg, model, tokenizer)
    scalers = {name: scoring.scaler_of(calibration, name) for name in scoring.SCALERS}
    test_pairs = read_pairs(cfg.paths.mined, "test")
    mentions = read_mentions(cfg.paths.prepared)

    pairs = pair_figures(cfg, model, tokenizer, test_pairs, mentions, scalers)
    linking = linking_figures(cfg, model, tokenizer, mentions, calibration["retrieval_weight"], scalers)
    table = before_after(cfg, tokenizer, linking.candidates)
    draw_plots(out_dir / "plots", pairs, linking, scalers, cfg.eval.calibration_bins)

    details = detailed_metrics(pairs, linking, table, scalers, cfg.eval.calibration_bins)
    atomic.write_json(out_dir / CALIBRATION_FILE, calibration)
    atomic.write_json(out_dir / EVALUATION_FILE,
                      evaluation_results(cfg, pairs, linking, table, calibration, scalers, test_pairs))
    info = {"data": cfg.data.source, "checkpoint": str(run.checkpoint_path(which)), "start": cfg.cross_encoder.path,
            "protocol": f"mined test pairs; re-rank top {cfg.eval.rerank_top_k} candidates by cross-encoder logit + "
                        f"{calibration['retrieval_weight']:g} × bi-encoder cosine"}
    return Evaluation({short: details[name] for short, name in HEADLINE.items()}, details, info)


def pair_figures(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                 pairs: Sequence[Pair], mentions: Sequence[MentionRecord], scalers: dict[str, Scaler]) -> PairFigures:
    e = cfg.eval
    logits = cross.pair_logits(model, tokenizer, [pair_text.segments(p) for p in pairs], e.batch_size, cfg.max_length)
    labels = np.array([p.label for p in pairs])
    probabilities = sigmoid(logits)
    predicted = probabilities >= e.threshold
    documents = scoring.pair_documents(pairs, mentions)
    kinds = np.array([p.kind for p in pairs])
    # Recall on the positives, the rejection rate on each kind of negative.
    correct = predicted == (labels == 1)
    return PairFigures(
        labels, logits, probabilities,
        raw=binary_metrics(labels, probabilities, e.threshold, e.calibration_bins),
        calibrated={name: binary_metrics(labels, scaler(logits), e.threshold, e.calibration_bins)
                    for name, scaler in scalers.items()},
        f1=scoring.f1_by_document(labels, predicted, documents, e.bootstrap, e.alpha, cfg.seed),
        baselines=scoring.pair_baselines(labels),
        documents=len(np.unique(documents)),
        by_kind={kind: float(correct[kinds == kind].mean()) for kind in KINDS if (kinds == kind).any()})


def linking_figures(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                    mentions: Sequence[MentionRecord], weight: float, scalers: dict[str, Scaler]) -> LinkingFigures:
    e = cfg.eval
    candidates = scoring.score_candidates(cfg, model, tokenizer, "test")
    figures = scoring.linking_accuracy(candidates, weight, e.bootstrap, e.alpha, cfg.seed)
    ambiguous = scoring.ambiguous([mentions[i].text for i in candidates.mentions], read_concepts(cfg.paths.prepared))
    if ambiguous.any():
        # Mentions whose string names concepts of different types: what context and type must settle.
        shown = scoring.linking_accuracy(candidates.subset(ambiguous), weight, e.bootstrap, e.alpha, cfg.seed)
        figures |= {f"ambiguous_{key}": value for key, value in shown.items()
                    if key in ("mentions", "documents") or "acc_at_1" in key or "minus_biencoder" in key}
    chosen = scalers[e.calibration] if e.calibration != "none" else Scaler()
    combined = candidates.combined(weight)
    probabilities = chosen(np.where(candidates.valid, candidates.cross, 0.0))
    figures |= {f"pipeline_{k}": v for k, v in pipeline_figures(candidates, combined, probabilities,
                                                                 e.high_confidence).items() if k != "acc_at_1"}
    top1 = top1_calibration(candidates, combined, probabilities, e.threshold, e.calibration_bins)
    figures |= {"top1_ece": top1["ece"], "top1_ece_adaptive": top1["ece_adaptive"]}
    return LinkingFigures(candidates, ambiguous, figures, top1)


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


def top1_calibration(candidates: scoring.Candidates, combined: np.ndarray, probabilities: np.ndarray,
                     threshold: float, bins: int) -> dict:
    """Is the top candidate's probability (in the linking order `combined`) the chance that it is the
    gold concept?"""
    top = np.argsort(-combined, axis=1, kind="stable")[:, 0]
    top_probability = probabilities[np.arange(len(top)), top]
    top_hit = candidates.hits(combined)[:, 0].astype(int)
    return {**binary_metrics(top_hit, top_probability, threshold, bins),
            **calibration_report(top_hit, top_probability, bins)}


def calibration_report(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> dict:
    return {"ece_adaptive": adaptive_ece(labels, probabilities, bins),
            "bins_equal_width": reliability_bins(labels, probabilities, bins, "uniform"),
            "bins_equal_mass": reliability_bins(labels, probabilities, bins, "quantile")}


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


def draw_plots(plot_dir: Path, pairs: PairFigures, linking: LinkingFigures, scalers: dict[str, Scaler],
               bins: int) -> None:
    """Reliability, ROC and PR of the test pairs; linking accuracy of the three orders."""
    plots.reliability_png(pairs.labels, {"uncalibrated": pairs.probabilities,
                                         **{name: scaler(pairs.logits) for name, scaler in scalers.items()}},
                          plot_dir / "reliability.png", "cross-encoder reliability (test pairs)", bins)
    plots.roc_png(pairs.labels, pairs.probabilities, plot_dir / "roc.png", "cross-encoder ROC (test pairs)")
    plots.pr_png(pairs.labels, pairs.probabilities, plot_dir / "pr.png", "cross-encoder precision-recall (test pairs)")
    link, ambiguous = linking.figures, linking.ambiguous
    groups = {f"acc@{k}": {f"{label}{suffix}": link[f"{name}_acc_at_{k}{suffix}"]
                           for name, label in ORDERS.items() for suffix in ("", "_ci_low", "_ci_high")}
              for k in (1, 5)}
    if ambiguous.any():
        groups["acc@1*"] = {f"{label}{suffix}": link[f"ambiguous_{name}_acc_at_1{suffix}"]
                            for name, label in ORDERS.items() for suffix in ("", "_ci_low", "_ci_high")}
    plots.per_class_png(groups,
                        plot_dir / "linking.png",
                        f"linking accuracy, {int(link['mentions'])} test mentions (95 % intervals by document)",
                        caption=(f"* the {int(ambiguous.sum())} mentions whose string names concepts of different "
                                 "semantic types" if ambiguous.any() else ""),
                        ylabel="share of mentions", xlabel="gold concept among the top k")


def detailed_metrics(pairs: PairFigures, linking: LinkingFigures, table: dict[str, dict[str, float]],
                     scalers: dict[str, Scaler], bins: int) -> dict[str, float]:
    """details.json: every figure, flat, the headline's among them."""
    return {**pairs.raw, "f1_ci_low": pairs.f1.low, "f1_ci_high": pairs.f1.high,
            "n_documents": float(pairs.documents),
            **pairs.baselines,
            "ece_adaptive": adaptive_ece(pairs.labels, pairs.probabilities, bins),
            **{f"{name}/{key}": m[key] for name, m in pairs.calibrated.items()
               for key in ("ece", "mce", "brier", "f1", "accuracy")},
            **{f"{name}/ece_adaptive": adaptive_ece(pairs.labels, scaler(pairs.logits), bins)
               for name, scaler in scalers.items()},
            **{f"pairs/{kind}_correct": v for kind, v in pairs.by_kind.items()},
            **{f"linking/{key}": v for key, v in linking.figures.items()},
            **{f"{row}/{key}": v for row, figures in table.items() for key, v in figures.items()}}


def evaluation_results(cfg: CrossEncoderConfig, pairs: PairFigures, linking: LinkingFigures,
                       table: dict[str, dict[str, float]], calibration: dict, scalers: dict[str, Scaler],
                       test_pairs: Sequence[Pair]) -> dict:
    """evaluation_results.json: the pair and linking figures with their reliability bins, the
    before/after table, and the calibrated probabilities an export of this checkpoint must return."""
    e, bins = cfg.eval, cfg.eval.calibration_bins
    folded = scalers[scoring.FOLDED_SCALER](pairs.logits[:EXPORT_CHECK_PAIRS])
    check = [{"first": first, "second": second, "probability": float(q)}
             for (first, second), q in zip(map(pair_text.segments, test_pairs[:EXPORT_CHECK_PAIRS]), folded,
                                           strict=True)]
    return {
        "test_pairs": {"uncalibrated": {**pairs.raw, **calibration_report(pairs.labels, pairs.probabilities, bins)},
                       **{name: {**pairs.calibrated[name], **calibration_report(pairs.labels, scaler(pairs.logits),
                                                                                bins)}
                          for name, scaler in scalers.items()},
                       "by_kind": pairs.by_kind, "f1_ci": [pairs.f1.low, pairs.f1.high], "f1_ci_unit": "document",
                       "documents": pairs.documents, "baselines": pairs.baselines,
                       "threshold": e.threshold,
                       "calibration": {"bins": bins, "fitted_on": calibration["fitted_on"],
                                       "ece": "bin-weighted mean |fraction positive - mean probability|, "
                                              "equal-width bins on P(positive)",
                                       "ece_adaptive": "the same over equal-mass bins",
                                       "mce": "max over non-empty equal-width bins"}},
        "linking": {**linking.figures, "rerank_top_k": e.rerank_top_k, "calibration": e.calibration,
                    "ci_unit": "document", "top1_calibration": linking.top1_calibration},
        "before_after": {**table, "scores": "raw sigmoid of the logit, cross-encoder order"},
        "export_check": {"scaler": scoring.FOLDED_SCALER, "pairs": check},
    }
