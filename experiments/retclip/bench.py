"""`bench`: throughput ratios against references measured in the same process.

(a) training: samples/s of the shared loop (`medrepro.trainer.fit`) against a bare PyTorch loop
    (same model initialisation, same batches, same optimizer and schedule); goal ≥ 0.95.
(b) data: patients/s reading both eyes from the LMDB (get + base64 + JPEG decode) against reading
    the very same JPEG bytes from one file per eye; goal ≥ 1.0.
(c) checksum: records/s of the imgs table's `get` (LMDB read, digest check, unpickle, validation)
    against the same gets with the digest check switched off; the cost of the check alone, no goal.
(d) full-size data path: does the training DataLoader keep the full profile's model fed on this
    machine's cores? An LMDB of synthetic eyes is built at the full profile's `data.lmdb_image_size`
    (256 px; the model's transform crops to 224) by the experiment's own generator and `build_lmdb`.
    Loading: patients/s the DataLoader over the real `PairDataset` delivers (full profile transform,
    a tokenizer at its context length) with 0, 1, ... cores workers, first batch excluded. Compute:
    patients/s of the training step (forward, backward, clip, AdamW step) of the full profile's
    architecture, ViT-B-16 at 224 px without pretrained weights and a tiny text tower, on pre-loaded
    batches. The ratio best loading / compute (goal ≥ 1.0: loading keeps up), which side bounds a
    step, and the fewest workers whose loading rate reaches the compute rate. It runs in a fresh
    interpreter under the full profile's CPU runtime (every core, the machine's own kernels), since
    torch fixes both when it loads and the benchmark's own process has the smoke profile's.
(e) build-lmdb scaling: seconds of the stage's work (read patients.jsonl, encode, write the tables)
    at ×1, ×10 and ×100 the profile's `data.synthetic_patients`, on synthetic input generated first
    (untimed), and the exponent of time against size (slope of log time on log size; 1.0 is linear).
Each side is measured `repeats` times, alternating, and the best of each is kept, which damps the
noise of a shared machine. The ratios are what to compare across machines, not the absolute rates.
"""

import argparse
import base64
import copy
import dataclasses
import io
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from torch.utils.data import DataLoader

from experiments.retclip import odir
from experiments.retclip.config import RetClipConfig
from experiments.retclip.data import (
    PairDataset,
    build_lmdb,
    make_records,
    open_split,
    prepared_fingerprint,
    read_records,
    write_records,
)
from experiments.retclip.experiment import EXPERIMENT
from experiments.retclip.model import RetClip, build_model, quick_gelu
from experiments.retclip.prepare import build
from experiments.retclip.prompts import load_prompts
from experiments.retclip.synthetic import write_synthetic_odir
from medrepro import config, optim, repro, runtime
from medrepro.benchmark import scaling_exponent
from medrepro.config_sections import RuntimeConfig, TinyBertConfig, encoder_path
from medrepro.errors import DataError
from medrepro.lmdb_store import LmdbTable
from medrepro.sampling import StepBatchSampler
from medrepro.tiny import build_tiny_bert
from medrepro.trainer import Schedule, fit

FULL_PROFILE = Path(__file__).with_name("configs") / "full.yaml"
T = TypeVar("T")


def bare_loop(model: RetClip, train_set: PairDataset, cfg: RetClipConfig, schedule: Schedule) -> float:
    """The reference: forward, backward, clip, step, clamp over the same batches; nothing else. Seconds."""
    tc = cfg.train
    optimizer = optim.build_optimizer(model, tc.lr, tc.weight_decay, tc.betas)
    scheduler = optim.build_scheduler(optimizer, schedule.warmup_steps, schedule.total_steps, tc.schedule,
                                      tc.min_lr_ratio)
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
    model, tokenizer, transform = build_model(cfg.model, encoder_path(cfg.encoders, variant))
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


# ------------------------------------------------------------------ (d) and (e): synthetic input


def synthetic_patients(root: Path, n_patients: int, seed: int,
                       photo_size: tuple[int, int] | None = None) -> list[odir.Patient]:
    """The generator's ODIR-5K under `root` (photo sides `photo_size`, else its defaults), read back as
    `prepare` reads it."""
    sides = {} if photo_size is None else {"min_size": photo_size[0], "max_size": photo_size[1]}
    return odir.read_odir(write_synthetic_odir(root, n_patients, seed, **sides))


def write_patients_file(path: Path, patients: list[odir.Patient], cfg: RetClipConfig,
                        split: Sequence[float]) -> Path:
    """patients.jsonl as `prepare` writes it for `patients`, split by `split`."""
    prompts = load_prompts(Path(cfg.prompts) if cfg.prompts else None)
    write_records(path, make_records(odir.split_patients(patients, split, cfg.seed), prompts))
    return path


def default_build_workers() -> int:
    return min(8, os.cpu_count() or 1)  # build-lmdb's own default (--workers)


def best_of(measure: Callable[[], float], repeats: int, budget_s: float = math.inf) -> float:
    """The smallest of up to `repeats` measurements; no more once `budget_s` seconds are spent."""
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        seconds = measure()
        best, spent = min(best, seconds), spent + seconds
        if spent >= budget_s:
            break
    return best


# ------------------------------------------------------------------------ (d) full-size data path


@dataclass(frozen=True)
class FullSizeSizes:
    """How much (d) measures; the defaults take 1–2 minutes on 2 cores."""

    patients: int = 160  # about 128 training pairs in the full profile's split
    # Generated photos larger than the LMDB's side, so that build-lmdb downsizes them as it does the
    # real ~2,000 px photos: upscaled small ones give smoother JPEGs, which decode faster.
    photo_size: tuple[int, int] = (288, 384)
    loader_batch_size: int = 8
    workers: tuple[int, ...] = ()  # () means 0, 1, ... up to the machine's cores
    # Patients per training step (two 224-px eyes each): ViT-B-16 takes seconds per image pair on 2 cores.
    compute_batch_size: int = 4
    compute_steps: int = 1  # timed steps per repeat, after one untimed warm-up step
    repeats: int = 2


def full_size_setup(cfg: RetClipConfig, full: RetClipConfig, root: Path,
                    sizes: FullSizeSizes) -> tuple[RetClip, PairDataset]:
    """The full profile's model (random init) and training set over a freshly built LMDB of synthetic eyes."""
    print(f"bench full-size data: {sizes.patients} synthetic patients → LMDB at {full.data.lmdb_image_size} px",
          flush=True)
    patients = synthetic_patients(root / "raw", sizes.patients, cfg.seed, sizes.photo_size)
    patients_file = write_patients_file(root / "patients.jsonl", patients, cfg, full.data.split)
    records = read_records(patients_file)
    build_lmdb(records, root / "lmdb", full.data.lmdb_image_size, full.data.jpeg_quality,
               prepared_fingerprint(patients_file), default_build_workers())
    # The hub's BERTs cannot be fetched here; a tiny one at the full context length tokenizes the same
    # way and adds next to nothing to a step. The real text tower would only slow the step down, so
    # loading keeps up at least as well as measured.
    tiny = TinyBertConfig(max_position=max(128, full.model.context_length))
    encoder = build_tiny_bert(root / "encoder", [r.text for r in records], tiny)
    # No pretrained weights (a download), but the activation they were trained with.
    model_cfg = dataclasses.replace(full.model, vision_pretrained="", quick_gelu=quick_gelu(full.model))
    torch.manual_seed(cfg.seed)
    model, tokenizer, transform = build_model(model_cfg, str(encoder))
    return model, PairDataset(root / "lmdb" / "train", transform, tokenizer)


def loading_seconds(train_set: PairDataset, workers: int, batch_size: int, seed: int) -> float:
    """Seconds per patient the training DataLoader takes to deliver batches in training order, the
    workers' start-up and the first batch excluded (once per epoch, not the steady rate)."""
    sampler = StepBatchSampler(len(train_set), batch_size, 1, 0, 1, seed, 0)
    batches = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=workers))
    next(batches)
    t0 = time.perf_counter()
    delivered = sum(len(left) for left, _, _ in batches)
    if not delivered:
        raise ValueError(f"{len(train_set)} training pairs make fewer than two batches of {batch_size}")
    return (time.perf_counter() - t0) / delivered


def step_seconds(model: RetClip, optimizer: torch.optim.Optimizer, batch: tuple, clip: float, steps: int) -> float:
    """Seconds of the fastest of `steps` training steps on `batch`, as the shared loop takes them
    (fp32: the full profile's fp16 needs a GPU)."""
    best = math.inf
    for _ in range(steps):
        t0 = time.perf_counter()
        loss, _ = model(*batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scales()
        best = min(best, time.perf_counter() - t0)
    return best


def full_size_rates(cfg: RetClipConfig, full: RetClipConfig, workdir: Path, sizes: FullSizeSizes) -> dict[str, Any]:
    """Loading patients/s per worker count and training-step patients/s, each side the best of
    `sizes.repeats`, alternating; plus what was measured on. Runs in whatever process calls it."""
    model, train_set = full_size_setup(cfg, full, workdir, sizes)
    workers = sizes.workers or tuple(range((os.cpu_count() or 1) + 1))
    batch = next(iter(DataLoader(train_set, batch_size=sizes.compute_batch_size)))
    optimizer = optim.build_optimizer(model, full.train.lr, full.train.weight_decay, full.train.betas)
    model.train()
    step = partial(step_seconds, model, optimizer, batch, full.train.clip_grad_norm)
    print(f"bench full-size data: warm-up step, batch of {sizes.compute_batch_size} patients", flush=True)
    step(1)  # the first step allocates the optimizer state
    load = dict.fromkeys(workers, math.inf)
    compute = math.inf
    for r in range(sizes.repeats):
        for w in workers:
            load[w] = min(load[w], loading_seconds(train_set, w, sizes.loader_batch_size, cfg.seed))
        compute = min(compute, step(sizes.compute_steps) / sizes.compute_batch_size)
        print(f"bench full-size data: repeat {r + 1}/{sizes.repeats}: loading "
              + ", ".join(f"{w} workers {1 / s:.1f}/s" for w, s in load.items())
              + f"; compute {1 / compute:.2f}/s", flush=True)
    return {
        "loading_per_s": {w: 1 / s for w, s in load.items()},
        "compute_per_s": 1 / compute,
        "lmdb_image_size": full.data.lmdb_image_size,
        "batch_shape": list(batch[0].shape),
        "train_pairs": len(train_set),
        "runtime": runtime.state(),
    }


def in_runtime(cfg: RuntimeConfig, workdir: Path, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a fresh interpreter under `cfg`'s CPU runtime: torch fixes its thread count and
    kernel level when it loads, so this process's cannot be changed. A plain subprocess rather than a
    spawned one, which would re-import the caller's main module."""
    pinned = runtime.environment(RuntimeConfig(threads=1, cpu_kernels="portable"))  # all that `pin` may set
    env = {k: v for k, v in os.environ.items() if k not in pinned} | runtime.environment(cfg)
    call = workdir / "call.pickle"
    workdir.mkdir(parents=True, exist_ok=True)
    call.write_bytes(pickle.dumps((fn, args)))
    subprocess.run([sys.executable, "-c", f"from {__name__} import run_call; run_call({str(call)!r})"],
                   env=env, check=True)
    return pickle.loads(call.with_suffix(".result").read_bytes())


def run_call(path: str) -> None:
    """The fresh interpreter's side of `in_runtime`."""
    fn, args = pickle.loads(Path(path).read_bytes())
    Path(path).with_suffix(".result").write_bytes(pickle.dumps(fn(*args)))


def full_size_data(cfg: RetClipConfig, workdir: Path, sizes: FullSizeSizes = FullSizeSizes()) -> dict[str, dict]:
    """(d): rates, ratio and setting entries for the full profile's data path against its training step."""
    full = config.load_config(RetClipConfig, FULL_PROFILE)
    measured = in_runtime(full.runtime, workdir, full_size_rates, cfg, full, workdir, sizes)
    loading, compute = measured["loading_per_s"], measured["compute_per_s"]
    fed = [w for w, rate in loading.items() if rate >= compute]
    ratio = max(loading.values()) / compute
    return {
        "rates": {**{f"data_224_samples_per_s_workers_{w}": rate for w, rate in loading.items()},
                  "data_224_compute_samples_per_s": compute},
        "ratios": {"data_224_ratio": ratio},
        "setting": {"data_224": {
            **dataclasses.asdict(sizes), "workers": list(loading), "train_pairs": measured["train_pairs"],
            "lmdb_image_size": measured["lmdb_image_size"], "batch_shape": measured["batch_shape"],
            "vision_model": full.model.vision_model, "runtime": measured["runtime"],
            "bound": "compute" if ratio >= 1 else "loading",
            # 0 workers load in the training process, between steps, so their time adds to each step's.
            "workers_needed": min(fed) if fed else None,
        }},
    }


# --------------------------------------------------------------------------- (e) build-lmdb scaling


@dataclass(frozen=True)
class BuildScaling:
    """The sizes (e) times: each of `scales` × `base_patients` (0: the profile's data.synthetic_patients)."""

    scales: tuple[int, ...] = (1, 10, 100)
    base_patients: int = 0
    # Best of up to `repeats` builds per size, but no more once `repeat_budget_s` is spent on one: the
    # small sizes are the noisy ones, and repeating the largest would double the benchmark.
    repeats: int = 3
    repeat_budget_s: float = 10.0


def build_seconds(cfg: RetClipConfig, workers: int) -> float:
    """One run of the build-lmdb stage (`prepare.build`): paths.prepared's patients.jsonl into paths.lmdb."""
    t0 = time.perf_counter()
    build(cfg, argparse.Namespace(workers=workers))
    return time.perf_counter() - t0


def build_lmdb_seconds(cfg: RetClipConfig, workdir: Path, scaling: BuildScaling, sizes: list[int],
                       workers: int) -> tuple[list[float], float]:
    """Seconds of build-lmdb at each of `sizes` (patients) and of generating the input, untimed in
    the benchmark. Runs in whatever process calls it."""
    print(f"bench build-lmdb: generating {max(sizes)} synthetic patients (untimed)", flush=True)
    t0 = time.perf_counter()
    # One generation at the largest size; each smaller size is its first patients by id (the photos of
    # a patient do not depend on how many follow), which spares generating them again.
    patients = synthetic_patients(workdir / "raw", max(sizes), cfg.seed)
    generated = time.perf_counter() - t0
    print(f"bench build-lmdb: generated in {generated:.0f} s", flush=True)
    seconds = []
    for scale, n in zip(scaling.scales, sizes, strict=True):
        prepared = workdir / f"x{scale}"
        write_patients_file(prepared / "patients.jsonl", patients[:n], cfg, cfg.data.split)
        scaled = copy.deepcopy(cfg)
        scaled.paths.prepared, scaled.paths.lmdb = str(prepared), str(prepared / "lmdb")
        seconds.append(best_of(partial(build_seconds, scaled, workers), scaling.repeats, scaling.repeat_budget_s))
        print(f"bench build-lmdb: ×{scale} ({n} patients): {seconds[-1]:.2f} s", flush=True)
    return seconds, generated


def build_scaling(cfg: RetClipConfig, workdir: Path, scaling: BuildScaling = BuildScaling()) -> dict[str, dict]:
    """(e): seconds of build-lmdb per size and the scaling exponents, as rates and setting entries.

    Measured in a fresh interpreter under the profile's runtime, as the stage runs: the build forks
    its encoders from the calling process, and forking this one, grown by (a)–(d), costs more.
    """
    base = scaling.base_patients or cfg.data.synthetic_patients
    sizes = [base * scale for scale in scaling.scales]
    workers = default_build_workers()
    seconds, generated = in_runtime(cfg.runtime, workdir, build_lmdb_seconds, cfg, workdir, scaling, sizes, workers)
    rates = {f"build_lmdb_seconds_x{s}": t for s, t in zip(scaling.scales, seconds, strict=True)}
    rates["build_lmdb_scaling_exponent"] = scaling_exponent(sizes, seconds)
    # Between neighbouring sizes too: a fixed start-up cost bends the small end below 1.0, a superlinear
    # step shows at the large end.
    for i in range(len(sizes) - 1):
        rates[f"build_lmdb_scaling_exponent_x{scaling.scales[i]}_x{scaling.scales[i + 1]}"] = scaling_exponent(
            sizes[i:i + 2], seconds[i:i + 2])
    return {
        "rates": rates,
        "setting": {"build_lmdb": {**dataclasses.asdict(scaling), "patients": sizes, "workers": workers,
                                   "image_size": cfg.data.lmdb_image_size, "generate_seconds": generated}},
    }


def bench(cfg: RetClipConfig, workdir: Path, steps: int = 20, repeats: int = 3,
          full_size: FullSizeSizes = FullSizeSizes(), scaling: BuildScaling = BuildScaling()) -> dict:
    """(a)–(c) on the prepared smoke data with the first variant's encoder; (d) and (e) on synthetic
    data they generate in `workdir`."""
    lmdb = Path(cfg.paths.lmdb)
    if not (lmdb / "train").is_dir():
        raise DataError(f"{lmdb}/train not found: the benchmark reads the prepared data; run "
                        "`medrepro retclip prepare` and `medrepro retclip build-lmdb` first")
    variant = EXPERIMENT.variants[0]
    train = training_ratio(cfg, variant, workdir, steps, repeats)
    data = data_ratio(lmdb / "train", workdir, repeats)
    loaded = full_size_data(cfg, workdir / "full-size", full_size)
    built = build_scaling(cfg, workdir / "build-scaling", scaling)
    return {
        "setting": {"variant": variant, "steps": steps, "batch_size": cfg.train.batch_size, "repeats": repeats,
                    **loaded["setting"], **built["setting"]},
        "rates": {**{k: v for k, v in {**train, **data}.items() if not k.endswith("_ratio")},
                  **loaded["rates"], **built["rates"]},
        "ratios": {"train_ratio": train["train_ratio"], "data_ratio": data["data_ratio"],
                   "checksum_ratio": data["checksum_ratio"], **loaded["ratios"]},
        # Loading keeps up when it delivers at least what a step consumes.
        "goals": {"train_ratio": 0.95, "data_ratio": 1.0, "data_224_ratio": 1.0},
    }
