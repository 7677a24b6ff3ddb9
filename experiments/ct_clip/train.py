"""`train`: CT-CLIP on the training shards with the shared loop; zero-shot mean AUROC on validation."""

from pathlib import Path

import torch

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import CtClipConfig
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.model import CTClip, build_model, tokenize
from medrepro import repro
from medrepro.errors import ConfigError
from medrepro.trainer import FitResult, fit


def encoder_path(cfg: CtClipConfig, variant: str) -> str:
    if variant not in cfg.encoders:
        raise ConfigError(f"the config has no encoders.{variant}; it defines {', '.join(sorted(cfg.encoders))}")
    return cfg.encoders[variant].path


def train(cfg: CtClipConfig, variant: str, run_dir: Path, resume: str | None = None) -> FitResult:
    shards = Path(cfg.paths.shards)
    repro.seed_everything(cfg.seed, cfg.train.deterministic)  # before the towers are initialised
    model, tokenizer = build_model(cfg.model, tuple(cfg.data.shape), encoder_path(cfg, variant))
    train_set = ShardDataset(shards / "train" / "manifest.json")
    # The first val_samples of the validation shards, evaluated on the main process: the same volumes
    # whatever the number of processes.
    val_set = ShardDataset(shards / "valid" / "manifest.json", limit=cfg.eval.val_samples)

    def collate(batch: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        volumes, texts, _ = zip(*batch, strict=True)
        return torch.stack(volumes), tokenize(tokenizer, list(texts), cfg.model.context_length)

    def loss_fn(model: CTClip, batch: tuple) -> tuple:
        volumes, tokens = batch
        return model(volumes, **tokens)

    def evaluate(model: CTClip) -> dict[str, float]:
        pred = zeroshot.predict(model, tokenizer, val_set, cfg.eval.batch_size, cfg.model.context_length)
        summary = zeroshot.summarize(pred)
        return {f"val/{k}": summary[k] for k in ("auroc_macro", "auroc_weighted", "f1_weighted")}

    # The manifests carry every shard's SHA-256: hashing them identifies the data without reading the
    # terabytes of the full release at every start.
    return fit(model, train_set, cfg.train, run_dir, loss_fn=loss_fn, seed=cfg.seed, collate_fn=collate,
               evaluate=evaluate, after_step=CTClip.clamp_temperature, resume=resume, run_name=f"ct_clip-{variant}",
               run_config=cfg, data=[train_set.manifest_path, val_set.manifest_path], variant=variant)
