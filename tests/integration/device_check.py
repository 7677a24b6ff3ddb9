"""Device discipline without a GPU: run a code path with the model on PyTorch's `meta` device.

A GPU run fails when a path hands the model a tensor on another device than its parameters (a
validation batch left on the CPU, labels made with `torch.arange(n)`). On a CPU-only machine every
tensor is on the CPU, so such a bug cannot show. Here the model's parameters live on `meta`, a
second device that every machine has; inside `strict_devices()` any torch operation that mixes
tensors of two devices raises `DeviceMismatch` naming the operation and the devices (0-dim CPU
tensors are exempt: PyTorch treats them as scalars on any device).

Meta tensors have shapes but no values, so a path can only run until it reads a number back from
the device (`.item()`, `.tolist()`, `.cpu()`, `bool(t)`, NumPy) or needs one for a shape (a boolean
mask, `nonzero`). That read raises `Reached`: the
data got to the model on its device and the model computed on it. A test asserts that each path
ends in `Reached` (or returns), never in `DeviceMismatch`.
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

META = torch.device("meta")


class DeviceMismatch(AssertionError):
    pass


class Reached(Exception):
    """The path read a value back from the model's device: everything before it ran on that device."""


# Moving data between devices (and `Module.to`'s own check of the moved parameter) and indexing with
# CPU indices are allowed across devices, as on a GPU.
_CROSSING = {torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.__getitem__, torch.Tensor.__setitem__,
             torch.Tensor.index_select, torch.Tensor.type_as, torch._has_compatible_shallow_copy_type}
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
          torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.cpu,
          torch.Tensor.__array__,
          # Results whose shape depends on the values: a read too.
          torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select, torch.unique,
          torch.Tensor.unique}


class _StrictDevices(TorchFunctionMode):
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in _READS and tensors and tensors[0].device == META:
            raise Reached(getattr(func, "__name__", str(func)))
        if func is torch.Tensor.__getitem__ and any(t.dtype == torch.bool and t.device == META for t in tensors[1:]):
            raise Reached("boolean mask")
        if func is torch.Tensor.to and tensors and tensors[0].device == META and _target(args, kwargs) == "cpu":
            raise Reached("to(cpu)")
        if func not in _CROSSING:
            devices = {t.device for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                shapes = ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
                raise DeviceMismatch(f"{getattr(func, '__qualname__', func)} was handed tensors on "
                                     f"{' and '.join(sorted(map(str, devices)))}: {shapes}")
        return func(*args, **kwargs)


def _target(args: tuple, kwargs: dict) -> str | None:
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value).type
    return None


@contextmanager
def strict_devices() -> Iterator[None]:
    with _StrictDevices():
        yield


def run_path(fn: Callable[[], Any]) -> str:
    """Run `fn` under strict devices: "reached" (it read a value off the device) or "returned"."""
    try:
        with strict_devices():
            fn()
    except Reached:
        return "reached"
    return "returned"


@contextmanager
def default_device_is_meta() -> Iterator[None]:
    """`medrepro.device.default_device()` answers `meta` in every module that imported it."""
    from medrepro import device

    original = device.default_device
    patched = [m for m in list(sys.modules.values()) if getattr(m, "default_device", None) is original]
    for module in patched:
        module.default_device = lambda: META
    try:
        yield
    finally:
        for module in patched:
            module.default_device = original
