"""`train`: the cross-encoder on the mined pairs, with the shared loop; the best checkpoint by F1 on
the dev pairs. Calibration and the exported model directory are later steps of their own: `evaluate`
calibrates the checkpoint it evaluates, `export` (export.py) writes the calibrated model."""

from pathlib import Path

import numpy as np
from torch import nn

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import pair_text
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.layout import pairs_file
from experiments.cross_encoder.readers import read_pairs
from medrepro import repro
from medrepro.calibration import sigmoid
from medrepro.metrics import binary_metrics
from medrepro.rundir import RunDir
from medrepro.trainer import fit


def train(cfg: CrossEncoderConfig, variant: str, run: RunDir, resume: str | None = None) -> None:
    repro.seed_everything(cfg.seed, cfg.train.deterministic)  # before the classifier head is initialised
    model, tokenizer = cross.load(cfg.cross_encoder.path)
    train_pairs = read_pairs(cfg.paths.mined, "train")
    dev_pairs = read_pairs(cfg.paths.mined, "dev")
    dev_inputs = [pair_text.segments(p) for p in dev_pairs]
    dev_labels = np.array([p.label for p in dev_pairs])

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = cross.pair_logits(model, tokenizer, dev_inputs, cfg.eval.batch_size, cfg.max_length)
        m = binary_metrics(dev_labels, sigmoid(logits), cfg.eval.threshold, cfg.eval.calibration_bins)
        # The same loss as training (mean BCE on logits), for early stopping on loss if chosen.
        loss = float(np.mean(np.logaddexp(0, logits) - dev_labels * logits))
        return {"val/loss": loss, **{f"val/{k}": m[k] for k in ("f1", "precision", "recall", "roc_auc", "pr_auc",
                                                                 "ece")}}

    fit(model, cross.PairDataset(train_pairs), cfg.train, run, loss_fn=cross.loss_fn, seed=cfg.seed,
        collate_fn=cross.collate(tokenizer, cfg.max_length), evaluate=evaluate, resume=resume,
        run_name=f"cross_encoder-{variant}", run_config=cfg,
        data=[Path(cfg.paths.mined) / pairs_file(s) for s in ("train", "dev")], variant=variant)
