"""Batch order keyed by (seed, epoch): the same on every run, every world size, and after a resume.

The permutation of an epoch depends only on the seed and the epoch number. A global batch of
`batch_size` samples is cut into `accum` micro-steps, and each micro-step into one slice per rank,
so two processes see exactly the samples one process would see at the same global batch. A resumed
run starts the permutation at the first step it has not done, without loading the skipped batches.
"""

from collections.abc import Iterator

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class StepBatchSampler:
    """Yields this rank's micro-batches (lists of indices) for one epoch, from `start_step` on."""

    def __init__(self, n: int, batch_size: int, accum: int, rank: int, world_size: int, seed: int, epoch: int,
                 start_step: int = 0, shuffle: bool = True):
        micro, rem = divmod(batch_size, accum * world_size)
        if rem or micro == 0:
            raise ValueError(f"batch_size {batch_size} must be a multiple of accumulation ({accum}) × "
                             f"processes ({world_size})")
        self.n, self.batch_size, self.accum, self.micro = n, batch_size, accum, micro
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.start_step, self.shuffle = start_step, shuffle

    def __len__(self) -> int:
        return max(0, steps_per_epoch(self.n, self.batch_size) - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        for step in range(self.start_step, steps_per_epoch(self.n, self.batch_size)):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            for a in range(self.accum):
                chunk = batch[a * self.micro * self.world_size:(a + 1) * self.micro * self.world_size]
                yield chunk[self.rank * self.micro:(self.rank + 1) * self.micro].tolist()


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of `n` samples at global batch `batch_size`.

    Incomplete global batches are dropped so every optimizer step sees the same batch size.
    """
    return n // batch_size
