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
        # torch's CPU sqrt (AdamW's denominator) calls MKL's vector math, which no MKL_CBWR branch
        # both keeps vendor-neutral and rounds exactly: see `pin_torch`. Read by `pin_torch`.
        "MEDREPRO_EXACT_SQRT": "1",
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


def pin_torch() -> None:
    """The pin that no library variable gives: torch's CPU `sqrt`, exactly rounded, where
    `MEDREPRO_EXACT_SQRT=1` (the portable kernels) is set. Call it after `pin`, in each process.

    torch computes a float `sqrt` on CPU with MKL's vector math (VML, high-accuracy mode: within one
    unit in the last place, not exactly rounded). Under MKL_CBWR=COMPATIBLE its last bits depend on the
    CPU: of 100,000 float32 square roots, 16.6 % are one unit off on an Intel Sapphire Rapids machine
    and 15.2 % on the same binary under QEMU's emulation of an AMD EPYC, a Haswell or an Ice Lake CPU,
    not all the same ones. AdamW takes one per weight per step, so the smoke trainings of four
    experiments parted between those machines from their first steps. (MKL_CBWR=AVX2 rounds
    exactly, but is vendor-neutral for Intel only.) A square root has one exact answer, which numpy's
    loop computes with the CPU's IEEE instruction on every x86-64 machine; this kernel replaces torch's
    for the CPU (autograd's formula is untouched), and is registered once per process.
    """
    global _exact_sqrt
    if os.environ.get("MEDREPRO_EXACT_SQRT") != "1" or _exact_sqrt is not None:
        return
    import warnings

    import numpy as np
    import torch

    def exact(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        dtype = out.dtype if out is not None else (x.dtype if x.is_floating_point() or x.is_complex()
                                                   else torch.get_default_dtype())
        # numpy has no bfloat16; float32's exactly rounded root rounds to the nearest bfloat16 or half
        # (24 bits ≥ 2 × 8 + 2: a second rounding of a square root is innocuous).
        wide = x.detach().to(torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
        root = torch.from_numpy(np.asarray(np.sqrt(wide.numpy()))).to(dtype)  # 0-d: numpy gives a scalar
        if out is None:
            return root
        return out.resize_(root.shape).copy_(root)

    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # torch warns that the CPU kernel it had is replaced: the point
        warnings.simplefilter("ignore")
        library.impl("sqrt", exact, "CPU")
        library.impl("sqrt.out", exact, "CPU")
        library.impl("sqrt_", lambda x: x.copy_(exact(x)), "CPU")
    _exact_sqrt = library


_exact_sqrt = None  # the registration, kept alive: torch drops the kernels when it is collected


# The libraries' own switches for their chatter, read when they load (and passed on to child processes).
_QUIET_ENV = {
    # transformers' notices and load reports (the table of keys missing from a checkpoint, expected when a
    # model is built from a config with a fresh head); its errors still show.
    "TRANSFORMERS_VERBOSITY": "error",
    # The bars of transformers and the hub ("Loading weights", "Writing model shards").
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
_VERBOSE_ENV = "MEDREPRO_VERBOSE"


def set_verbose(verbose: bool) -> None:
    """Quiet by default: the libraries' chatter off, their warnings that matter and every line of our own
    (progress, summaries) on; `verbose` (the command line's `--verbose`) leaves the libraries at their
    defaults, and is passed on to child processes as MEDREPRO_VERBOSE=1 (`verbose()`).

    Like `pin`, it acts through variables the libraries read when they load, so call it before they are
    imported: a process that has loaded them already (a test calling `main`) keeps their settings."""
    for key, value in _QUIET_ENV.items():
        if not verbose:
            os.environ[key] = value
        elif os.environ.get(key) == value:
            del os.environ[key]
    if verbose:
        os.environ[_VERBOSE_ENV] = "1"
    else:
        os.environ.pop(_VERBOSE_ENV, None)


def verbose() -> bool:
    """Whether this command, or the one that started this process, was asked for the libraries' output
    (`--verbose`, or MEDREPRO_VERBOSE=1 in the environment)."""
    return os.environ.get(_VERBOSE_ENV) == "1"


def state() -> dict[str, object]:
    """What is in force: for the manifest of every run."""
    import torch

    found = {
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "exact_sqrt": _exact_sqrt is not None,
        "env": {key: os.environ[key] for key in (*_THREAD_ENV, *_KERNEL_ENV["portable"]) if key in os.environ},
    }
    if "faiss" in sys.modules:  # only the experiments that search load it
        found["faiss_simd_level"] = sys.modules["faiss"].SIMDConfig.get_level_name()
    return found


def launched_as_main() -> bool:
    """Whether this process is the launcher's rank 0 (torchrun, accelerate launch; a lone process is),
    the one that holds a command's output and writes what `fit` leaves to its caller. Read from the
    environment: asking Accelerate would set up its shared state before `fit` chooses the backend."""
    return int(os.environ.get("RANK", "0")) == 0
