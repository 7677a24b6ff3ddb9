"""open_clip_train on several CPU processes: `torchrun ... -m experiments.biomedica_clip.cpu_ddp ARGS`.

open_clip_train 3.3.0 wraps the model as `DistributedDataParallel(model, device_ids=[device])` on every
device, and torch refuses `device_ids` for a CPU module ("device_ids ... only work with single-device
GPU modules"), so a multi-process run on CPU (gloo) stops before its first step. This entry point drops
`device_ids` for CPU modules and then runs open_clip_train's own `main` with the same arguments;
nothing else changes. `train` uses it only for processes > 1 on CPU; GPUs run open_clip_train.main.
"""

import sys

import torch
from open_clip_train import main as open_clip_main


class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module: torch.nn.Module, device_ids: list | None = None, *args, **kwargs) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


if __name__ == "__main__":
    torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel
    open_clip_main.main(sys.argv[1:])
