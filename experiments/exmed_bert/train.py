"""`train`: fine-tune ExMed-BERT from its pretrained encoder (random_init, clinvec_init) with the
shared loop, best checkpoint by validation F1; or fit a baseline (random_forest, xgboost) on the same
split and store its validation and test scores."""

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments.exmed_bert import baselines, dataset
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.endpoint import Records, endpoint_model, scores
from experiments.exmed_bert.experiment import BASELINES
from experiments.exmed_bert.model import count_parameters
from experiments.exmed_bert.pretrain import pretrained_encoder, pretrained_run
from medrepro import atomic, repro, run_guard
from medrepro.metrics import binary_metrics
from medrepro.rundir import RunDir
from medrepro.runtime import launched_as_main
from medrepro.trainer import fit

VAL_METRICS = ("f1", "precision", "recall", "roc_auc", "pr_auc")


def train(cfg: ExMedBertConfig, variant: str, run: RunDir, resume: str | None = None) -> None:
    if variant in BASELINES:
        return train_baseline(cfg, variant, run)
    vocab = dataset.read_vocab(cfg.paths.prepared)
    train_records = dataset.read_split(cfg.paths.prepared, "train")
    val_records = dataset.read_split(cfg.paths.prepared, "val")
    val_labels = np.array([r["endpoint"] for r in val_records])
    repro.seed_everything(cfg.seed, cfg.train.deterministic)  # before the classifier is initialised
    model = endpoint_model(cfg, vocab, pretrained_encoder(cfg, variant))
    if launched_as_main():
        print(f"fine-tuning {variant}: {count_parameters(model):,} parameters")
    labels = np.array([r["endpoint"] for r in train_records])
    positive_weight = torch.tensor((labels == 0).sum() / max(1, (labels == 1).sum()), dtype=torch.float32)

    loss_fn = endpoint_loss(positive_weight)

    def evaluate(model: nn.Module) -> dict[str, float]:
        p = scores(model, val_records, cfg.eval.batch_size, cfg.pretrain.plos_days)
        m = binary_metrics(val_labels, p, cfg.eval.threshold)
        return {f"val/{k}": m[k] for k in VAL_METRICS}

    fit(model, Records(train_records), cfg.train, run, loss_fn=loss_fn, seed=cfg.seed,
        collate_fn=lambda rs: dataset.pad_batch(rs, cfg.pretrain.plos_days), evaluate=evaluate, resume=resume,
        run_name=f"exmed_bert-{variant}", run_config=cfg,
        data=[Path(cfg.paths.prepared) / "train.jsonl", pretrained_run(cfg, variant).final],
        variant=variant)


def endpoint_loss(positive_weight: torch.Tensor):
    """Fine-tuning's loss: BCE on the endpoint logit, positives weighted by negatives/positives of train."""
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = model(batch)
        return F.binary_cross_entropy_with_logits(logits, batch["endpoint"],
                                                  pos_weight=positive_weight.to(logits.device)), {}

    return loss_fn


def train_baseline(cfg: ExMedBertConfig, variant: str, run: RunDir) -> None:
    """Fit on train, score val and test; scores.json, the validation point, the resolved config and
    manifest, then the completion mark."""
    vocab = dataset.read_vocab(cfg.paths.prepared)
    splits = {s: dataset.read_split(cfg.paths.prepared, s) for s in dataset.SPLITS}
    x = {s: baselines.features(records, vocab) for s, records in splits.items()}
    y = np.array([r["endpoint"] for r in splits["train"]])
    with run.locked():
        run.begin(cfg, variant=variant, data=[Path(cfg.paths.prepared) / "train.jsonl"])
        predicted, _ = baselines.fit_predict(variant, cfg.baselines, cfg.seed, x["train"], y,
                                             {"val": x["val"], "test": x["test"]})
        atomic.write_json(run / baselines.SCORES, {s: {"patient_id": [r["patient_id"] for r in splits[s]],
                                             "score": predicted[s].tolist()} for s in ("val", "test")})
        # A tree model has no training curve: its one validation point, under the names the fine-tuned
        # variants log, so every variant's curves/val.csv charts the same metrics.
        val_labels = np.array([r["endpoint"] for r in splits["val"]])
        m = binary_metrics(val_labels, predicted["val"], cfg.eval.threshold)
        atomic.write_text(run.train_log, json.dumps({"step": 0, **{f"val/{k}": m[k] for k in VAL_METRICS}}) + "\n")
        identity = run_guard.identity(cfg, variant, {"train.jsonl": repro.sha256_file(
            Path(cfg.paths.prepared) / "train.jsonl")})
        run.mark_complete(variant, identity["hash"], 0, 0)
    print(f"{variant}: fitted on {len(y)} patients; scores in {run / baselines.SCORES}")
