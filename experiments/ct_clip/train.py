"""`train`: CT-CLIP on the training shards with the shared loop; the best checkpoint is chosen by zero-shot
mean AUROC on training patients held out for selection, so the evaluated validation split never
chooses the model that is reported on it."""

from pathlib import Path

import numpy as np
import torch

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import SELECTION_FILE, CtClipConfig
from experiments.ct_clip.ctrate import patient_of
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.model import CTClip, build_model, tokenize
from medrepro import atomic, repro
from medrepro.config_sections import encoder_path
from medrepro.errors import ConfigError
from medrepro.rundir import RunDir
from medrepro.runtime import launched_as_main
from medrepro.trainer import fit


def selection_patients(keys: list[str], n: int, seed: int) -> list[str]:
    """`n` training patients, drawn by `seed`, whose volumes choose the best checkpoint and are never
    trained on."""
    patients = sorted({patient_of(k) for k in keys})
    if not 0 < n < len(patients):
        raise ConfigError(f"eval.selection_patients is {n}; it must leave training patients and hold out at least "
                          f"one of the {len(patients)}", "eval.selection_patients")
    return sorted(np.random.default_rng(seed).choice(patients, size=n, replace=False).tolist())


def train(cfg: CtClipConfig, variant: str, run: RunDir, resume: str | None = None) -> None:
    shards = Path(cfg.paths.shards)
    repro.seed_everything(cfg.seed, cfg.train.deterministic)  # before the towers are initialised
    model, tokenizer = build_model(cfg.model, tuple(cfg.data.shape), encoder_path(cfg.encoders, variant))
    every = ShardDataset(shards / "train" / "manifest.json")
    held_out = set(selection_patients([key for _, key, _ in every.items], cfg.eval.selection_patients, cfg.seed))
    train_set = every.subset(lambda key: patient_of(key) not in held_out)
    # Evaluated on the main process: the same volumes whatever the number of processes.
    val_set = every.subset(lambda key: patient_of(key) in held_out)

    def collate(batch: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        volumes, texts, _ = zip(*batch, strict=True)
        return torch.stack(volumes), tokenize(tokenizer, list(texts), cfg.model.context_length)

    def loss_fn(model: CTClip, batch: tuple) -> tuple:
        volumes, tokens = batch
        return model(volumes, **tokens)

    def evaluate(model: CTClip) -> dict[str, float]:
        pred = zeroshot.predict(model, tokenizer, val_set, cfg.eval.batch_size, cfg.model.context_length)
        summary = zeroshot.summarize(pred)
        return {f"val/{k}": summary[k] for k in ("auroc_macro", "f1_macro", "accuracy_macro")}

    # The manifests carry every shard's SHA-256: hashing them identifies the data without reading the
    # terabytes of the full release at every start.
    fit(model, train_set, cfg.train, run, loss_fn=loss_fn, seed=cfg.seed, collate_fn=collate,
        evaluate=evaluate, after_step=CTClip.clamp_temperature, resume=resume,
        run_name=f"ct_clip-{variant}", run_config=cfg, data=[every.manifest_path], variant=variant)
    if launched_as_main():
        atomic.write_json(run / SELECTION_FILE, {
            "patients": sorted(held_out), "volumes": [key for _, key, _ in val_set.items],
            "train_volumes": len(train_set)})
