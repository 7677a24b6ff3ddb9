"""`python -m experiments.biomedica_clip.open_clip_compat ARGS`: open_clip_train's own `main(ARGS)`,
with two defects of the pinned versions worked around and nothing else changed.

1. WebDataset training stops at the end of its first shard (KeyError: 'fname'). webdataset 1.0.2's
   `tar_file_expander` yields an end-of-shard marker `{}` after each shard (`eof_value`), and
   open_clip_train 3.3.0's own `group_by_keys_nothrow` reads `["fname"]` of every item. The expander
   open_clip_train calls is given `eof_value=None`, webdataset's way of leaving the marker out; samples
   are then grouped as before the marker existed (keys never span two shards here: `verify` checks them).
2. Several processes on CPU stop before the first step: open_clip_train wraps the model as
   `DistributedDataParallel(model, device_ids=[device])`, and torch refuses `device_ids` for a CPU
   module. `device_ids` is dropped for CPU modules only; GPUs keep it.

The runtime pins come in the environment from `train`; the one that lives in torch (`pin_torch`) is
applied here, in each trainer process.
"""

import functools
import sys

import torch
from open_clip_train import data as open_clip_data
from open_clip_train import main as open_clip_main

from medrepro import runtime


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module: torch.nn.Module, device_ids: list | None = None, *args, **kwargs) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


def patch() -> None:
    open_clip_data.tar_file_expander = functools.partial(open_clip_data.tar_file_expander, eof_value=None)
    torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel


if __name__ == "__main__":
    runtime.pin_torch()
    patch()
    open_clip_main.main(sys.argv[1:])
