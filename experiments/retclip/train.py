"""`train`: RET-CLIP with one text encoder, once per training seed, on the shared training loop.

A variant's run directory holds one complete run of the shared loop per seed of `seeds`:

    <run dir>/seed-<s>/     checkpoints/, best.pt, final.pt, train_log.jsonl, config.yaml (seeds: [s]), ...
    <run dir>/train_log.jsonl   the mean over seeds of every logged number, step by step (the curves)
    <run dir>/config.yaml       the resolved config with every seed
    <run dir>/complete.json     written last, once every seed has finished
"""

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

from experiments.retclip import zeroshot
from experiments.retclip.config import RetClipConfig
from experiments.retclip.data import PairDataset, open_split, single_label_eyes
from experiments.retclip.model import RetClip, build_model
from experiments.retclip.prompts import load_prompts
from medrepro import atomic, checkpoint, config, repro, run_guard
from medrepro.errors import ConfigError, DataError
from medrepro.results import TRAIN_LOG
from medrepro.trainer import FitResult, fit, launched_as_main


def encoder_path(cfg: RetClipConfig, variant: str) -> str:
    """The text encoder of a variant: `encoders.<variant>.path`."""
    if variant not in cfg.encoders:
        raise ConfigError(f"the config has no encoders.{variant}; it defines {', '.join(sorted(cfg.encoders))}")
    return cfg.encoders[variant].path


def seed_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed-{seed}"


def train(cfg: RetClipConfig, variant: str, run_dir: Path, resume: str | None = None) -> list[FitResult]:
    """Train `variant` once per seed of `cfg.seeds`; `resume` applies to each seed run that has checkpoints."""
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {cfg.seeds}", "seeds")
    check_validation_split(cfg)
    run_dir = Path(run_dir)
    main = launched_as_main()
    if main:
        (run_dir / run_guard.COMPLETE_FILE).unlink(missing_ok=True)  # complete again only when every seed is
    results = []
    for seed in cfg.seeds:
        directory = seed_dir(run_dir, seed)
        has_checkpoints = bool(checkpoint.step_checkpoints(directory / "checkpoints"))
        results.append(train_seed(cfg, variant, seed, directory, resume if has_checkpoints else None))
    if main:
        config.save_config(cfg, run_dir / "config.yaml")
        atomic.write_text(run_dir / TRAIN_LOG, mean_log([seed_dir(run_dir, s) / TRAIN_LOG for s in cfg.seeds]))
        marks = {s: json.loads((seed_dir(run_dir, s) / run_guard.COMPLETE_FILE).read_text()) for s in cfg.seeds}
        atomic.write_json(run_dir / run_guard.COMPLETE_FILE, {
            "variant": variant, "identity": "+".join(m["identity"] for m in marks.values()),
            "step": results[0].state.step, "best_step": {str(s): m["best_step"] for s, m in marks.items()},
            "seeds": list(cfg.seeds)})
    return results


def check_validation_split(cfg: RetClipConfig) -> None:
    """Refuse, before any training, a validation split on which the best metric cannot be computed:
    an AUC needs single-label eyes of at least two classes (otherwise the metric is left out, and the
    run stopped with a KeyError at its first validation, an epoch in)."""
    if not cfg.train.best_metric.startswith("val/auc"):
        return
    valid = Path(cfg.paths.lmdb) / "valid"
    classes = {eye.label for eye in single_label_eyes(open_split(valid)[2])}
    if len(classes) < 2:
        raise DataError(f"the validation split {valid} has single-label eyes of {len(classes)} class(es): "
                        f"train.best_metric {cfg.train.best_metric} needs two or more; use more patients or a "
                        "larger validation fraction (data.split), or another best_metric")


def train_seed(cfg: RetClipConfig, variant: str, seed: int, run_dir: Path, resume: str | None) -> FitResult:
    cfg = dataclasses.replace(cfg, seeds=[seed])
    lmdb = Path(cfg.paths.lmdb)
    repro.seed_everything(seed, cfg.train.deterministic)  # before the towers are initialised
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

    return fit(model, train_set, cfg.train, run_dir, loss_fn=loss_fn, seed=seed, evaluate=evaluate,
               after_step=RetClip.clamp_logit_scales, resume=resume, run_name=f"retclip-{variant}-seed{seed}",
               run_config=cfg, data=[lmdb / "train", lmdb / "valid"], variant=variant)


def mean_log(logs: list[Path]) -> str:
    """JSON lines of the mean over runs of every number each run logged at a step (last value per
    step and run, as the curves keep it)."""
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for log in logs:
        per_step: dict[int, dict[str, float]] = defaultdict(dict)
        for line in log.read_text().splitlines():
            record = json.loads(line)
            per_step[int(record.pop("step"))].update(record)
        for step, record in per_step.items():
            for key, value in record.items():
                values[step][key].append(value)
    return "".join(json.dumps({"step": step, **{k: sum(v) / len(v) for k, v in sorted(values[step].items())}}) + "\n"
                   for step in sorted(values))
