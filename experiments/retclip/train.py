"""`train`: RET-CLIP with one text encoder, once per training seed, on the shared training loop.

A variant's run directory holds one complete run of the shared loop per seed of `seeds`, each a part
`seed-<s>` of the run (see `medrepro.rundir`: its config has `seeds: [s]`); the variant's own directory
holds the resolved config with every seed, the mean over seeds of every logged number step by step
(the curves), and the completion mark, written last, that lists the seeds' parts.
"""

import dataclasses
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from experiments.retclip import zeroshot
from experiments.retclip.config import RetClipConfig, seed_run
from experiments.retclip.data import PairDataset, open_split, single_label_eyes
from experiments.retclip.model import RetClip, build_model
from experiments.retclip.prompts import load_prompts
from medrepro import atomic, config, repro
from medrepro.config_sections import encoder_path
from medrepro.errors import ConfigError, DataError
from medrepro.rundir import RunDir
from medrepro.runtime import launched_as_main
from medrepro.trainer import FitResult, fit


def train(cfg: RetClipConfig, variant: str, run: RunDir, resume: str | None = None) -> None:
    """Train `variant` once per seed of `cfg.seeds`; `resume` applies to each seed run that has checkpoints."""
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {cfg.seeds}", "seeds")
    check_validation_split(cfg)
    main = launched_as_main()
    if main:
        run.complete_file.unlink(missing_ok=True)  # complete again only when every seed is
    results = []
    for seed in cfg.seeds:
        part = seed_run(run, seed)
        results.append(train_seed(cfg, variant, seed, part, resume if part.step_checkpoints() else None))
    if main:
        parts = [seed_run(run, s) for s in cfg.seeds]
        config.save_config(cfg, run.config_file)
        atomic.write_text(run.train_log, mean_log([p.train_log for p in parts]))
        identities = "+".join(p.completion(variant, "train it again")["identity"] for p in parts)
        run.mark_complete(variant, hashlib.sha256(identities.encode()).hexdigest(),
                          max(r.state.step for r in results), -1, parts)


def check_validation_split(cfg: RetClipConfig) -> None:
    """Refuse, before any training, a validation split on which the best metric cannot be computed:
    an AUC needs single-label eyes of at least two classes (otherwise the metric is left out, and the
    run stopped with a KeyError at its first validation, an epoch in)."""
    if not cfg.train.best_metric.startswith("val/auroc"):
        return
    valid = Path(cfg.paths.lmdb) / "valid"
    classes = {eye.label for eye in single_label_eyes(open_split(valid)[2])}
    if len(classes) < 2:
        raise DataError(f"the validation split {valid} has single-label eyes of {len(classes)} class(es): "
                        f"train.best_metric {cfg.train.best_metric} needs two or more; use more patients or a "
                        "larger validation fraction (data.split), or another best_metric")


def train_seed(cfg: RetClipConfig, variant: str, seed: int, run: RunDir, resume: str | None) -> FitResult:
    cfg = dataclasses.replace(cfg, seeds=[seed])
    lmdb = Path(cfg.paths.lmdb)
    repro.seed_everything(seed, cfg.train.deterministic)  # before the towers are initialised
    model, tokenizer, transform = build_model(cfg.model, encoder_path(cfg.encoders, variant))
    train_set = PairDataset(lmdb / "train", transform, tokenizer)
    prompts = load_prompts(Path(cfg.prompts) if cfg.prompts else None)

    def loss_fn(model: RetClip, batch: tuple) -> tuple:
        return model(*batch)

    def evaluate(model: RetClip) -> dict[str, float]:
        pred = zeroshot.predict(model, tokenizer, transform, prompts, lmdb / "valid", cfg.eval.batch_size)
        summary = zeroshot.summarize(pred)
        return {f"val/{k}": summary[k] for k in ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro")
                if k in summary}

    return fit(model, train_set, cfg.train, run, loss_fn=loss_fn, seed=seed, evaluate=evaluate,
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
