"""Pin how the process computes on CPU: thread counts and kernel instruction sets.

torch, numpy, OpenMP, MKL, oneDNN, OpenBLAS and FAISS read these settings once, when they load, so `pin`
must run before torch or numpy is imported; the command line calls it right after loading the config, and the variables
pass on to every child process (DataLoader workers, process pools, `torchrun`).
"""

import os
import sys

from medrepro.config_sections import RuntimeConfig

# Each library's own switch for its kernel level, at the "portable" setting. Each was measured to
# change results on an AVX-512 machine when left free (see README, Reproducibility).
_KERNEL_ENV = {
    "portable": {
        "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised ATen kernels (softmax, reductions, ...)
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN kernels in torch (gelu and friends)
        # MKL (torch's BLAS): only the COMPATIBLE branch gives the same bits on Intel and AMD CPUs;
        # MKL_CBWR=AVX2 holds on Intel only. It cost 16 % on the smoke trainings.
        "MKL_CBWR": "COMPATIBLE",
        # numpy's runtime-dispatched AVX-512 loops (float64 exp and log differ) and OpenBLAS' kernel.
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "OPENBLAS_CORETYPE": "Haswell",
        # FAISS' dynamically dispatched distance kernels (flat search scores differ in the last bits).
        "FAISS_SIMD_LEVEL": "AVX2",
    },
}
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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

    found = {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {key: os.environ[key] for key in (*_THREAD_ENV, *_KERNEL_ENV["portable"]) if key in os.environ},
    }
    if "faiss" in sys.modules:  # only the experiments that search load it
        found["faiss_simd_level"] = sys.modules["faiss"].SIMDConfig.get_level_name()
    return found
