"""`python -m experiments.biomedica_clip.open_clip_compat ARGS`: open_clip_train's own `main(ARGS)`,
with three defects of the pinned versions worked around and its random draws keyed by the epoch, so that
a resumed run finishes with the uninterrupted run's weights; nothing else changed.

1. WebDataset training stops at the end of its first shard (KeyError: 'fname'). webdataset 1.0.2's
   `tar_file_expander` yields an end-of-shard marker `{}` after each shard (`eof_value`), and
   open_clip_train 3.3.0's own `group_by_keys_nothrow` reads `["fname"]` of every item. The expander
   open_clip_train calls is given `eof_value=None`, webdataset's way of leaving the marker out; samples
   are then grouped as before the marker existed (keys never span two shards here: `audit` checks them).
2. Several processes on CPU stop before the first step: open_clip_train wraps the model as
   `DistributedDataParallel(model, device_ids=[device])`, and torch refuses `device_ids` for a CPU
   module. `device_ids` is dropped for CPU modules only; GPUs keep it.
3. `--resume` restores the model, optimizer and scaler and the epoch to start from (main.py, "optionally
   resume from a checkpoint"), not the random streams. main seeds Python, NumPy and torch once
   (`random_seed(args.seed, args.rank)`) and the streams run on through every epoch: the CSV loader's
   shuffle (`DataLoader(shuffle=True)`, no generator) and its workers' seeds draw from torch's global
   stream at each epoch's start, the image augmentation draws during the epoch, and evaluation draws
   too (every DataLoader iterator takes a base seed). A run resumed at epoch N drew epoch N from a
   freshly seeded stream, not from where epoch N-1 left it. So each epoch starts from streams seeded by
   (seed, rank, epoch) alone (`train_one_epoch_seeded`).
4. WebDataset's sample shuffle is not seeded at all: open_clip_train builds `wds.shuffle(5000, 1000)`
   without an rng, and webdataset then seeds it from the pid and the clock; its loader workers are
   persistent, so their augmentation streams run on from the epoch they started in, and the resampled
   shard choice (`ResampledShards2`) is seeded from the worker's seed, which the main process draws when
   the workers start (epoch 0, or the resumed epoch). The shuffle is replaced by the same buffer seeded
   by (seed, rank, worker, epoch), which also reseeds the worker's streams each epoch, and the resampler
   is given a worker seed from (seed, rank, worker). The shard shuffle (`detshuffle2`) already uses
   seed + epoch.

5. open_clip_train's `main` returns -1 where it refuses to run ("Error. Experiment already exists", a
   remote sync that failed) and its own `__main__` drops the value, so the process exits 0 having trained
   nothing; here it exits 1, and torchrun stops the other ranks.

The runtime pins come in the environment from `train`; the one that lives in torch (`pin_torch`) is
applied here, in each trainer process.
"""

import functools
import random
import sys
from argparse import Namespace
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from open_clip_train import data as open_clip_data
from open_clip_train import main as open_clip_main
from torch.utils.data import get_worker_info
from webdataset.filters import FilterFunction, _shuffle

from medrepro import repro, runtime

_train_one_epoch = open_clip_main.train_one_epoch
_get_wds_dataset = open_clip_data.get_wds_dataset


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module: torch.nn.Module, device_ids: list | None = None, *args, **kwargs) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


def key_seeds(*key: int, n: int = 1) -> list[int]:
    """`n` 32-bit seeds for a key such as (seed, rank, epoch), hashed so that neighbouring keys get
    unrelated streams (seed + rank + epoch would give rank 1's epoch 0 to rank 0's epoch 1)."""
    return [int(s) for s in np.random.SeedSequence(key).generate_state(n)]


def worker_id() -> int:
    """This DataLoader worker's index; 0 in the main process (`workers: 0`)."""
    worker = get_worker_info()
    return worker.id if worker is not None else 0


def train_one_epoch_seeded(model: torch.nn.Module, data: dict, loss: torch.nn.Module, epoch: int,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                           scheduler: Callable | None, dist_model: torch.nn.Module | None, args: Namespace,
                           tb_writer: Any = None) -> None:
    """open_clip_train's `train_one_epoch` after seeding Python, NumPy and torch from (seed, rank, epoch)."""
    repro.seed_everything(key_seeds(args.seed, args.rank, epoch)[0], deterministic=False)
    _train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=tb_writer)


class EpochSampleShuffle(wds.PipelineStage):
    """open_clip_train's sample shuffle buffer, seeded by (seed, rank, worker, epoch). It runs where the
    samples are decoded and augmented (a loader worker, or the main process) at each epoch's start, and
    again where an epoch wraps around its shards (`with_epoch`), with the same key."""

    def __init__(self, bufsize: int, initial: int, seed: int, rank: int, epoch: open_clip_data.SharedEpoch):
        self.bufsize, self.initial, self.seed, self.rank, self.epoch = bufsize, initial, seed, rank, epoch

    def run(self, src: Iterator) -> Iterator:
        shuffle_seed, stream_seed = key_seeds(self.seed, self.rank, worker_id(), self.epoch.get_value(), n=2)
        if get_worker_info() is not None:
            # A persistent worker's augmentation stream; the main process's is seeded by train_one_epoch_seeded.
            repro.seed_everything(stream_seed, deterministic=False)
        return _shuffle(src, self.bufsize, self.initial, random.Random(shuffle_seed))


def resampling_seed(seed: int, rank: int) -> int:
    """ResampledShards2's worker seed (it adds the epoch)."""
    return key_seeds(seed, rank, worker_id())[0]


def seed_pipeline(stages: list, seed: int, rank: int, epoch: open_clip_data.SharedEpoch) -> None:
    """Replace the unseeded sample shuffle of open_clip_train's training pipeline and seed its resampler."""
    shuffles = [i for i, stage in enumerate(stages) if isinstance(stage, FilterFunction) and stage.f is _shuffle]
    if len(shuffles) != 1:
        raise RuntimeError(f"open_clip_train's WebDataset pipeline has {len(shuffles)} sample shuffles where "
                           "open_clip_compat expects 1: its seeding needs updating for this open_clip_train")
    found = stages[shuffles[0]]
    stages[shuffles[0]] = EpochSampleShuffle(found.kw["bufsize"], found.kw["initial"], seed, rank, epoch)
    for stage in stages:
        if isinstance(stage, open_clip_data.ResampledShards2):
            stage.worker_seed = functools.partial(resampling_seed, seed, rank)


def get_wds_dataset_seeded(args: Namespace, preprocess_img: Callable, is_train: bool, epoch: int = 0,
                           floor: bool = False, tokenizer: Callable | None = None) -> open_clip_data.DataInfo:
    info = _get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
    if is_train:
        # WebLoader → its DataLoader → the DataPipeline open_clip_train built.
        seed_pipeline(info.dataloader.pipeline[0].dataset.pipeline, args.seed, args.rank, info.shared_epoch)
    return info


def patch() -> None:
    open_clip_data.tar_file_expander = functools.partial(open_clip_data.tar_file_expander, eof_value=None)
    torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel
    open_clip_main.train_one_epoch = train_one_epoch_seeded
    open_clip_data.get_wds_dataset = get_wds_dataset_seeded


if __name__ == "__main__":
    runtime.pin_torch()
    patch()
    sys.exit(1 if open_clip_main.main(sys.argv[1:]) == -1 else 0)
