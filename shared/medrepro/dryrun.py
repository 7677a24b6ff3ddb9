"""Real-size models measured before anyone books a GPU: parameters, activation memory, time per step,
and a projection of per-device memory at the full profile's batch.

An experiment describes each model it trains as a `Probe`: the model built exactly as its `train`
builds it from the full config, a function making a batch of n samples in the real shapes, and the
training loss. `measure` runs forward and backward at one or two batch sizes on the CPU in fp32 and
counts the bytes autograd keeps for the backward pass (`torch.autograd.graph.saved_tensors_hooks`):
that, not the allocator's peak, is what grows with the batch on a GPU.

The projection (`project`) for a device of G GiB at per-device batch B:

    weights, gradients and AdamW's two moments, fp32:  16 bytes × trainable parameters (+ 4 × frozen)
    activations:                                       fixed + B × per_sample  (from two measured batches;
                                                       from one, per_sample = bytes at batch 1, fixed = 0)
    margin:                                            × 1.2 for the allocator, workspaces and the CUDA context

Activations are counted in fp32: under bf16/fp16 autocast the matmul inputs are kept in half
precision, so the projection errs on the safe side for mixed-precision profiles.
"""

import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medrepro.errors import ConfigError

GIB = 1024**3
DEVICES_GIB = (24, 40, 80)
MARGIN = 1.2
# Parameter counts may differ from the reference by this fraction before the dry run fails.
TOLERANCE = 0.01


@dataclass
class Probe:
    """One model as the full profile trains it."""

    name: str
    model: nn.Module
    # n → a batch of n samples in the real shapes, as the training loader yields it.
    batch: Callable[[int], Any]
    # (model, batch) → the training loss.
    loss: Callable[[nn.Module, Any], torch.Tensor]
    # The full profile's batch per device and per micro-step, and where that number comes from.
    full_batch: int
    full_batch_note: str = ""
    # Named sub-modules whose parameters are reported too (e.g. the image and text towers).
    parts: dict[str, nn.Module] = field(default_factory=dict)


def parameters(module: nn.Module) -> tuple[int, int]:
    """(all, trainable), each tensor counted once."""
    seen = {id(p): p for p in module.parameters()}
    return (sum(p.numel() for p in seen.values()), sum(p.numel() for p in seen.values() if p.requires_grad))


def saved_bytes(fn: Callable[[], torch.Tensor], model: nn.Module | None = None) -> tuple[torch.Tensor, int]:
    """Run `fn` (a forward pass) and count the bytes of the distinct storages autograd saves for backward,
    leaving out the storages of `model`'s parameters: a layer that saves its weight, or a view of it
    (`weight.t()`, a slice of a fused projection), keeps no memory beyond the weight itself."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()} if model is not None else set()
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights and not isinstance(tensor, nn.Parameter):
                storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(storages.values())


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def step_once(probe: Probe, n: int) -> dict[str, float]:
    """Forward and backward at batch n: seconds and saved activation bytes."""
    batch = probe.batch(n)
    probe.model.train()
    t0 = time.perf_counter()
    loss, activations = saved_bytes(lambda: probe.loss(probe.model, batch), probe.model)
    loss.backward()
    seconds = time.perf_counter() - t0
    if not torch.isfinite(loss.detach()).all():
        raise ValueError(f"{probe.name}: the loss at batch {n} is {loss.item()}")
    probe.model.zero_grad(set_to_none=True)
    return {"batch": n, "seconds": seconds, "activation_bytes": activations, "loss": float(loss.detach())}


def measure(probe: Probe, batch_sizes: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """Parameters, one step at each batch size, and the projection at the full profile's batch."""
    total, trainable = parameters(probe.model)
    steps = [step_once(probe, n) for n in batch_sizes]
    if len(steps) >= 2:
        a, b = steps[0], steps[-1]
        per_sample = (b["activation_bytes"] - a["activation_bytes"]) / (b["batch"] - a["batch"])
        fixed = max(0.0, a["activation_bytes"] - per_sample * a["batch"])
    else:
        per_sample, fixed = steps[0]["activation_bytes"] / steps[0]["batch"], 0.0
    return {
        "name": probe.name,
        "parameters": total,
        "trainable": trainable,
        "parts": {name: parameters(part)[0] for name, part in probe.parts.items()},
        "steps": steps,
        "activation_per_sample_bytes": per_sample,
        "activation_fixed_bytes": fixed,
        "peak_rss_bytes": peak_rss_bytes(),
        "full_batch": probe.full_batch,
        "full_batch_note": probe.full_batch_note,
        "projection": project(total, trainable, fixed, per_sample, probe.full_batch),
    }


def project(total: int, trainable: int, fixed: float, per_sample: float, batch: int,
            devices_gib: Sequence[int] = DEVICES_GIB) -> dict[str, Any]:
    """Per-device memory at `batch` and, per device size, what it takes to run."""
    states = 16 * trainable + 4 * (total - trainable)
    need = MARGIN * (states + fixed + batch * per_sample)
    verdicts = {}
    for gib in devices_gib:
        room = gib * GIB / MARGIN - states - fixed
        if need <= gib * GIB:
            verdicts[str(gib)] = "fits"
        elif room >= per_sample:
            micro = int(room // per_sample)
            verdicts[str(gib)] = f"gradient accumulation ×{math.ceil(batch / micro)} (micro-batch {micro})"
        elif states * MARGIN < gib * GIB:
            verdicts[str(gib)] = "activation checkpointing (batch 1 does not fit)"
        else:
            verdicts[str(gib)] = "does not fit (weights and optimizer state alone)"
    return {"batch": batch, "states_gib": states / GIB, "need_gib": need / GIB, "devices": verdicts}


def check_reference(name: str, count: int, reference: dict[str, Any] | None, readme: str) -> dict[str, Any]:
    """Compare a parameter count with its reference entry ({count, source[, documented]}); a difference
    above 1 % is accepted only where the experiment's README contains the `documented` sentence."""
    if reference is None:
        raise ConfigError(f"reference.yaml has no parameters.{name}: add the published or upstream count "
                          "with its source")
    expected = int(reference["count"])
    difference = (count - expected) / expected
    documented = reference.get("documented", "")
    if abs(difference) > TOLERANCE and not (documented and documented in readme):
        raise ConfigError(f"{name} has {count:,} parameters, {difference:+.2%} from the reference {expected:,} "
                          f"({reference.get('source', '?')}): fix the model or the full config, or explain the "
                          f"difference in the README and quote it as parameters.{name}.documented in reference.yaml")
    return {"model": name, "count": count, "reference": expected, "difference": difference,
            "source": reference.get("source", ""), "documented": documented if abs(difference) > TOLERANCE else ""}


def table(measurements: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]]) -> str:
    """The dry run's report as Markdown: parameters against references, then memory and time."""
    lines = ["| model | parameters | reference | difference | source |", "|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['count']:,} | {c['reference']:,} | {c['difference']:+.2%}"
              f"{' (README)' if c['documented'] else ''} | {c['source']} |" for c in checks]
    lines += ["", "| model | seconds per step at batch | peak memory (CPU) | activations / sample | weights + AdamW "
              "| full batch per device | projected | " + " | ".join(f"{g} GB" for g in DEVICES_GIB) + " |",
              "|---|---|---|---|---|---|---|" + "---|" * len(DEVICES_GIB)]
    for m in measurements:
        p = m["projection"]
        steps = ", ".join(f"{s['seconds']:.2f} at {s['batch']}" for s in m["steps"])
        lines.append(f"| {m['name']} | {steps} | {m['peak_rss_bytes'] / GIB:.1f} GiB | "
                     f"{m['activation_per_sample_bytes'] / GIB * 1024:.0f} MiB | "
                     f"{p['states_gib']:.2f} GiB | {m['full_batch']} | {p['need_gib']:.1f} GiB | "
                     + " | ".join(p["devices"][str(g)] for g in DEVICES_GIB) + " |")
    return "\n".join(lines)
