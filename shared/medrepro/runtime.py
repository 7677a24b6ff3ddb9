"""Pin how the process computes on CPU: thread counts and kernel instruction sets.

torch, OpenMP, MKL and oneDNN read these settings once, when they load, so `pin` must run before
torch is imported; the command line calls it right after loading the config, and the variables
pass on to every child process (DataLoader workers, process pools, `torchrun`).
"""

import os
import sys

from medrepro.config_sections import RuntimeConfig

# Each library's own switch for its kernel level, at the "avx2" setting.
_KERNEL_ENV = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised ATen kernels
        "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility (BLAS in torch)
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (linear, conv and friends on CPU)
    },
}
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment(cfg: RuntimeConfig) -> dict[str, str]:
    """The variables `pin` sets for `cfg`."""
    env = dict(_KERNEL_ENV.get(cfg.cpu_kernels, {}))
    if cfg.threads:
        env.update(dict.fromkeys(_THREAD_ENV, str(cfg.threads)))
    return env


def pin(cfg: RuntimeConfig) -> dict[str, str]:
    """Set the variables for `cfg` in this process (overriding the caller's) and return them.

    In a process that has already imported torch (a test calling `main` directly) the kernel level
    can no longer change; the thread count still does, and `state()` records what is in force.
    """
    env = environment(cfg)
    os.environ.update(env)
    if cfg.threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(cfg.threads)
    return env


def state() -> dict[str, object]:
    """What is in force: for the manifest of every run."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {key: os.environ[key] for key in (*_THREAD_ENV, *_KERNEL_ENV["avx2"]) if key in os.environ},
    }
