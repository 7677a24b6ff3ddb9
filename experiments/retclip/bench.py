"""`bench`: throughput ratios against references measured in the same process.

(a) training: samples/s of the shared loop (`medrepro.trainer.fit`) against a bare PyTorch loop
    (same model initialisation, same batches, same optimizer and schedule); goal ≥ 0.95.
(b) data: patients/s reading both eyes from the LMDB (get + base64 + JPEG decode) against reading
    the very same JPEG bytes from one file per eye; goal ≥ 1.0.
(c) checksum: records/s of the imgs table's `get` (LMDB read, digest check, unpickle, validation)
    against the same gets with the digest check switched off; the cost of the check alone, no goal.
Each side is measured `repeats` times, alternating, and the best of each is kept, which damps the
noise of a shared machine. The ratios are what to compare across machines, not the absolute rates.
"""

import base64
import io
import math
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from experiments.retclip.config import RetClipConfig
from experiments.retclip.data import PairDataset, open_split
from experiments.retclip.experiment import EXPERIMENT
from experiments.retclip.model import RetClip, build_model
from experiments.retclip.train import encoder_path
from medrepro import optim, repro
from medrepro.errors import DataError
from medrepro.lmdb_store import LmdbTable
from medrepro.sampling import StepBatchSampler
from medrepro.trainer import Schedule, fit


def bare_loop(model: RetClip, train_set: PairDataset, cfg: RetClipConfig, schedule: Schedule) -> float:
    """The reference: forward, backward, clip, step, clamp over the same batches; nothing else. Seconds."""
    tc = cfg.train
    optimizer = optim.build_optimizer(model, tc.lr, tc.weight_decay, tc.betas)
    scheduler = optim.build_scheduler(optimizer, schedule.warmup_steps, schedule.total_steps, tc.schedule)
    model.train()
    step = 0
    t0 = time.perf_counter()
    for epoch in range(math.ceil(schedule.total_steps / schedule.steps_per_epoch)):
        sampler = StepBatchSampler(len(train_set), tc.batch_size, 1, 0, 1, cfg.seed, epoch)
        for left, right, tokens in DataLoader(train_set, batch_sampler=sampler, num_workers=tc.num_workers):
            if step == schedule.total_steps:
                break
            loss, _ = model(left, right, tokens)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            model.clamp_logit_scales()
            step += 1
    return time.perf_counter() - t0


def training_ratio(cfg: RetClipConfig, variant: str, workdir: Path, steps: int, repeats: int) -> dict[str, float]:
    lmdb = Path(cfg.paths.lmdb)
    tc = cfg.train
    tc.tracking.tensorboard = False
    tc.log_every_steps = steps
    model, tokenizer, transform = build_model(cfg.model, encoder_path(cfg, variant))
    train_set = PairDataset(lmdb / "train", transform, tokenizer)
    schedule = Schedule.from_config(tc, len(train_set))
    tc.epochs = steps / schedule.steps_per_epoch
    schedule = Schedule.from_config(tc, len(train_set))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    best = {"fit": float("inf"), "bare": float("inf")}
    for r in range(repeats):
        model.load_state_dict(initial)
        repro.seed_everything(cfg.seed)
        best["bare"] = min(best["bare"], bare_loop(model, train_set, cfg, schedule) / schedule.total_steps)

        model.load_state_dict(initial)
        result = fit(model, train_set, tc, workdir / f"fit-{r}", loss_fn=lambda m, b: m(*b), seed=cfg.seed,
                     after_step=RetClip.clamp_logit_scales)
        best["fit"] = min(best["fit"], result.loop_seconds / result.state.step)
    return {
        "train_samples_per_s_shared_loop": tc.batch_size / best["fit"],
        "train_samples_per_s_bare_loop": tc.batch_size / best["bare"],
        "train_ratio": best["bare"] / best["fit"],
    }


def data_ratio(lmdb_split: Path, workdir: Path, repeats: int) -> dict[str, float]:
    imgs, _, _ = open_split(lmdb_split)
    keys = list(imgs.keys())
    files_dir = workdir / "jpeg"
    files_dir.mkdir(parents=True, exist_ok=True)
    for key in keys:
        for side, b64 in zip(("left", "right"), imgs.get(key), strict=True):
            (files_dir / f"{key}_{side}.jpg").write_bytes(base64.urlsafe_b64decode(b64))

    def from_lmdb() -> float:
        t0 = time.perf_counter()
        for key in keys:
            for b64 in imgs.get(key):
                Image.open(io.BytesIO(base64.urlsafe_b64decode(b64))).convert("RGB")
        return time.perf_counter() - t0

    def from_files() -> float:
        t0 = time.perf_counter()
        for key in keys:
            for side in ("left", "right"):
                with Image.open(files_dir / f"{key}_{side}.jpg") as image:
                    image.convert("RGB")
        return time.perf_counter() - t0

    unverified = LmdbTable(imgs.path, imgs.count_key, imgs.validate, imgs.hint, verify=False)

    def gets(table: LmdbTable) -> float:
        t0 = time.perf_counter()
        for key in keys:
            table.get(key)
        return time.perf_counter() - t0

    best_lmdb = min(from_lmdb() for _ in range(repeats))
    best_files = min(from_files() for _ in range(repeats))
    best_get = {"verified": float("inf"), "unverified": float("inf")}
    for _ in range(repeats):
        best_get["verified"] = min(best_get["verified"], gets(imgs))
        best_get["unverified"] = min(best_get["unverified"], gets(unverified))
    return {
        "data_patients_per_s_lmdb": len(keys) / best_lmdb,
        "data_patients_per_s_files": len(keys) / best_files,
        "data_ratio": best_files / best_lmdb,
        "data_gets_per_s_verified": len(keys) / best_get["verified"],
        "data_gets_per_s_unverified": len(keys) / best_get["unverified"],
        "checksum_ratio": best_get["unverified"] / best_get["verified"],
    }


def bench(cfg: RetClipConfig, workdir: Path, steps: int = 20, repeats: int = 3) -> dict:
    """The three ratios on the prepared smoke data, with the first variant's encoder."""
    lmdb = Path(cfg.paths.lmdb)
    if not (lmdb / "train").is_dir():
        raise DataError(f"{lmdb}/train not found: the benchmark reads the prepared data; run "
                        "`medrepro retclip prepare` and `medrepro retclip build-lmdb` first")
    variant = EXPERIMENT.variants[0]
    train = training_ratio(cfg, variant, workdir, steps, repeats)
    data = data_ratio(lmdb / "train", workdir, repeats)
    return {
        "setting": {"variant": variant, "steps": steps, "batch_size": cfg.train.batch_size, "repeats": repeats},
        "rates": {k: v for k, v in {**train, **data}.items() if not k.endswith("_ratio")},
        "ratios": {"train_ratio": train["train_ratio"], "data_ratio": data["data_ratio"],
                   "checksum_ratio": data["checksum_ratio"]},
        "goals": {"train_ratio": 0.95, "data_ratio": 1.0},
    }
