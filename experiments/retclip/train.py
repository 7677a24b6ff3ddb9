"""`train`: RET-CLIP with one text encoder, on the shared training loop."""

from pathlib import Path

from experiments.retclip import zeroshot
from experiments.retclip.config import RetClipConfig
from experiments.retclip.data import PairDataset
from experiments.retclip.model import RetClip, build_model
from experiments.retclip.prompts import load_prompts
from medrepro import repro
from medrepro.errors import ConfigError
from medrepro.trainer import FitResult, fit


def encoder_path(cfg: RetClipConfig, variant: str) -> str:
    """The text encoder of a variant: `encoders.<variant>.path`."""
    if variant not in cfg.encoders:
        raise ConfigError(f"the config has no encoders.{variant}; it defines {', '.join(sorted(cfg.encoders))}")
    return cfg.encoders[variant].path


def train(cfg: RetClipConfig, variant: str, run_dir: Path, resume: str | None = None) -> FitResult:
    lmdb = Path(cfg.paths.lmdb)
    repro.seed_everything(cfg.seed, cfg.train.deterministic)  # before the towers are initialised
    model, tokenizer, transform = build_model(cfg.model, encoder_path(cfg, variant))
    train_set = PairDataset(lmdb / "train", transform, tokenizer)
    prompts = load_prompts(Path(cfg.prompts) if cfg.prompts else None)

    def loss_fn(model: RetClip, batch: tuple) -> tuple:
        return model(*batch)

    def evaluate(model: RetClip) -> dict[str, float]:
        pred = zeroshot.predict(model, tokenizer, transform, prompts, lmdb / "valid", cfg.eval.batch_size)
        summary = zeroshot.summarize(pred)
        return {f"val/{k}": summary[k] for k in ("accuracy", "balanced_accuracy", "f1_macro", "auc_macro")
                if k in summary}

    return fit(model, train_set, cfg.train, run_dir, loss_fn=loss_fn, seed=cfg.seed, evaluate=evaluate,
               after_step=RetClip.clamp_logit_scales, resume=resume, run_name=f"retclip-{variant}",
               run_config=cfg, data=[lmdb / "train", lmdb / "valid"], variant=variant)
