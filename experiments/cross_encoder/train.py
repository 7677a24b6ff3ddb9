"""`train`: the cross-encoder on the mined pairs, with the shared loop. The best checkpoint by F1 on the
dev pairs is calibrated on the held-out calibration pairs and exported, Platt folded in, with a model
card, as a transformers / sentence-transformers model directory (see export.py)."""

from pathlib import Path

import numpy as np
from accelerate import PartialState
from torch import nn

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import scoring
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.export import export, model_card
from experiments.cross_encoder.mining import read_pairs
from experiments.cross_encoder.prepare import read_mentions
from medrepro import checkpoint, repro
from medrepro.calibration import sigmoid
from medrepro.metrics import binary_metrics
from medrepro.trainer import FitResult, fit

EXPORT_DIR = "model"


def train(cfg: CrossEncoderConfig, variant: str, out: Path, resume: str | None = None) -> FitResult:
    repro.seed_everything(cfg.seed, cfg.train.deterministic)  # before the classifier head is initialised
    model, tokenizer = cross.load(cfg.cross_encoder.path)
    train_pairs = read_pairs(cfg.paths.mined, "train")
    dev_pairs = read_pairs(cfg.paths.mined, "dev")
    dev_inputs = [p.inputs for p in dev_pairs]
    dev_labels = np.array([p.label for p in dev_pairs])

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = cross.pair_logits(model, tokenizer, dev_inputs, cfg.eval.batch_size, cfg.max_length)
        m = binary_metrics(dev_labels, sigmoid(logits), cfg.eval.threshold, cfg.eval.calibration_bins)
        # The same loss as training (mean BCE on logits), for early stopping on loss if chosen.
        loss = float(np.mean(np.logaddexp(0, logits) - dev_labels * logits))
        return {"val/loss": loss, **{f"val/{k}": m[k] for k in ("f1", "precision", "recall", "roc_auc", "pr_auc",
                                                                 "ece")}}

    result = fit(model, cross.PairDataset(train_pairs), cfg.train, out, loss_fn=cross.loss_fn, seed=cfg.seed,
                 collate_fn=cross.collate(tokenizer, cfg.max_length), evaluate=evaluate, resume=resume,
                 run_name=f"cross_encoder-{variant}", run_config=cfg,
                 data=[Path(cfg.paths.mined) / f"pairs_{s}.jsonl" for s in ("train", "dev")], variant=variant)
    if PartialState().process_index != 0:
        return result
    best = checkpoint.load(out / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    calibration = scoring.fit_calibration(cfg, model, tokenizer)
    card = model_card(cfg, variant, calibration, held_out_metrics(cfg, model, tokenizer, calibration))
    export(model, tokenizer, out / EXPORT_DIR, cfg.max_length, calibration, card)
    print(f"exported the best checkpoint (step {best['train_state']['step']}, "
          f"{cfg.train.best_metric} {best['train_state']['best_value']:.4f}) with its Platt calibration to "
          f"{out / EXPORT_DIR}")
    return result


def held_out_metrics(cfg: CrossEncoderConfig, model: nn.Module, tokenizer, calibration: dict) -> dict[str, float]:
    """The model card's figures on the calibration pairs and mentions (unseen in training)."""
    pairs = read_pairs(cfg.paths.mined, "calibration")
    logits = cross.pair_logits(model, tokenizer, [p.inputs for p in pairs], cfg.eval.batch_size, cfg.max_length)
    labels = np.array([p.label for p in pairs])
    prob = scoring.scaler_of(calibration, "platt")(logits)
    documents = scoring.pair_documents(pairs, read_mentions(cfg.paths.prepared))
    f1 = scoring.f1_by_document(labels, prob >= cfg.eval.threshold, documents, cfg.eval.bootstrap, cfg.eval.alpha,
                                cfg.seed)
    metrics = binary_metrics(labels, prob, cfg.eval.threshold, cfg.eval.calibration_bins)
    link = scoring.linking_accuracy(scoring.score_candidates(cfg, model, tokenizer, "calibration"),
                                    calibration["retrieval_weight"], cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)
    return {"pairs": len(pairs), "f1": f1.estimate, "f1_ci_low": f1.low, "f1_ci_high": f1.high,
            "roc_auc": metrics["roc_auc"], "ece": metrics["ece"], **{f"linking/{k}": v for k, v in link.items()}}
