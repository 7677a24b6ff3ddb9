"""`train`: the cross-encoder on the mined pairs, with the shared loop; the best checkpoint by
validation F1 is exported as a transformers / sentence-transformers model directory."""

from pathlib import Path

import numpy as np
from accelerate import PartialState
from torch import nn

from experiments.cross_encoder import model as cross
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.mining import read_pairs
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
    dev_inputs = [(p.text, p.name) for p in dev_pairs]
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
    cross.export(model, tokenizer, out / EXPORT_DIR, cfg.max_length)
    print(f"exported the best checkpoint (step {best['train_state']['step']}, "
          f"{cfg.train.best_metric} {best['train_state']['best_value']:.4f}) to {out / EXPORT_DIR}")
    return result
