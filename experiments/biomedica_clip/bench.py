"""`bench`: throughput ratios against references measured in the same run.

(a) data path: open_clip_train's samples/s training on our WebDataset shards against its own
    `--dataset-type synthetic` (one blank image and caption, no reading or decoding), same model, batch,
    samples per epoch and workers; the median of its per-batch rates after the first batches. Goal ≥ 0.9.
(b) audit: samples/s of `audit` (tar read, SHA-256, caption, image decode and metadata checks) against a raw
    read of the same tar files (every member's bytes, nothing decoded); the cost of checking, no goal.
Each side of (b) is measured `repeats` times, alternating, and the best kept; (a) runs the trainer once
per side (each run already holds many batches). Compare ratios across machines, not rates.
"""

import copy
import statistics
import subprocess
import tarfile
import time
from pathlib import Path

from experiments.biomedica_clip import archive, train
from experiments.biomedica_clip.config import BiomedicaClipConfig, logs_dir
from experiments.biomedica_clip.train import launcher, open_clip_args, progress_records
from medrepro import shards
from medrepro.errors import TrainingError
from medrepro.rundir import RunDir


def trainer_rate(cfg: BiomedicaClipConfig, run_dir: Path) -> float:
    """Median samples/s over open_clip_train's logged batches, the first two of each run left out."""
    run_dir.mkdir(parents=True)
    command = [*launcher(cfg), *open_clip_args(cfg, run_dir, None)]
    proc = subprocess.run(command, cwd=run_dir, env=train.trainer_env(), capture_output=True, text=True)
    records = progress_records(logs_dir(RunDir(run_dir)) / "out.log", cfg)
    if proc.returncode != 0 or len(records) < 4:
        raise TrainingError(f"open_clip_train failed in {run_dir} ({proc.returncode}): {proc.stderr[-2000:]}")
    return statistics.median(r["train/samples_per_s"] for r in records[2:])


def data_path_ratio(cfg: BiomedicaClipConfig, workdir: Path, epochs: int) -> dict[str, float]:
    t = cfg.train
    t.tensorboard, t.wandb, t.log_every_n_steps, t.save_frequency, t.epochs = False, False, 1, 0, epochs
    shards_cfg = copy.deepcopy(cfg)
    shards_cfg.train.dataset_type = "webdataset"
    samples = t.train_num_samples or train.source_samples(archive.train_sources(cfg))
    synthetic_cfg = copy.deepcopy(cfg)
    synthetic_cfg.train.dataset_type = "synthetic"
    synthetic_cfg.train.train_num_samples = samples
    ours = trainer_rate(shards_cfg, workdir / "shards")
    reference = trainer_rate(synthetic_cfg, workdir / "synthetic")
    return {"train_samples_per_s_shards": ours, "train_samples_per_s_synthetic": reference,
            "data_path_ratio": ours / reference}


def audit_ratio(cfg: BiomedicaClipConfig, repeats: int) -> dict[str, float]:
    sources = archive.train_sources(cfg)
    paths = [p for s in sources for p in s.paths]
    check = archive.sample_checker(cfg.data)
    samples = 0

    def checked() -> float:
        nonlocal samples
        t0 = time.perf_counter()
        samples = sum(shards.check_shards(s.directory / archive.MANIFEST, check) for s in sources)
        return time.perf_counter() - t0

    def raw() -> float:
        t0 = time.perf_counter()
        for path in paths:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile():
                        tar.extractfile(member).read()
        return time.perf_counter() - t0

    best = {"audit": float("inf"), "raw": float("inf")}
    for _ in range(repeats):
        best["audit"] = min(best["audit"], checked())
        best["raw"] = min(best["raw"], raw())
    return {"audit_samples_per_s": samples / best["audit"], "raw_read_samples_per_s": samples / best["raw"],
            "audit_ratio": best["raw"] / best["audit"]}


def bench(cfg: BiomedicaClipConfig, workdir: Path, epochs: int = 2, repeats: int = 3) -> dict:
    """Both ratios on the prepared (smoke: synthetic) shards with the profile's model and batch."""
    data = data_path_ratio(cfg, workdir, epochs)
    check = audit_ratio(cfg, repeats)
    t = cfg.train
    return {
        "setting": {"model": cfg.model.name, "batch_size": t.batch_size, "epochs": t.epochs, "workers": t.workers,
                    "device": t.device, "repeats": repeats},
        "rates": {k: v for k, v in {**data, **check}.items() if not k.endswith("_ratio")},
        "ratios": {"data_path_ratio": data["data_path_ratio"], "audit_ratio": check["audit_ratio"]},
        "goals": {"data_path_ratio": 0.9},
    }
