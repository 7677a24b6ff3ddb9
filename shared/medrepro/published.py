"""Published weights: read a released checkpoint without running code from it, and load its tensors into
the experiment's model under an explicit key map, strictly.

Strict means: every tensor of the file is either loaded or matched by the map's `dropped` pattern (the
parts a release carries that the model never computes with), every tensor of the model is filled, and
shapes agree. Anything else is one line naming the tensor, what was expected and what was found, so a
checkpoint of another architecture, another version or with one renamed tensor is refused, never half
loaded.
"""

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from medrepro.errors import CheckpointError

# A substitution's replacement: a template (r"\1") or a function of the match, as `re.sub` takes.
Replacement = str | Callable[[re.Match], str]


@dataclass(frozen=True)
class KeyMap:
    """How a release's tensor names become the model's.

    `renames` are regular-expression substitutions applied in order to the name with a leading dot (so a
    pattern can anchor on a whole component: r"\\.gamma$"); `dropped` matches the release's tensors that
    are deliberately not loaded, each kind named in the experiment's comment."""

    renames: tuple[tuple[str, Replacement], ...]
    dropped: str = ""

    def ours(self, key: str) -> str | None:
        """The model's name for the release's tensor `key`, or None for one deliberately dropped."""
        if self.dropped and re.search(self.dropped, key):
            return None
        key = "." + key
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key[1:]


def read_tensors(source: str | Path, what: str, names: Sequence[str] = (),
                 inside: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors of the release at `source`: a safetensors file, or a file `torch.load` reads with
    `weights_only=True` (no code from the file runs), or a directory holding one of `names` (tried in
    order). `inside` names the keys under which the file nests its state dict (`("state_dict",)`), if it
    does. `what` says what was expected, for the one-line errors."""
    path = Path(source)
    if path.is_dir():
        found = next((path / name for name in names if (path / name).is_file()), None)
        if found is None:
            present = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise CheckpointError(f"{path}: no {' or '.join(names) or 'weights file'} in this directory "
                                  f"(found {present}); --weights takes {what}")
        path = found
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; --weights takes {what}")
    loaded = _load(path, what)
    for key in inside:
        if not isinstance(loaded, Mapping) or key not in loaded:
            raise CheckpointError(f"{path}: no {key!r} entry holding the state dict; expected {what}")
        loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict; expected {what}")
    others = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if others:
        raise CheckpointError(f"{path}: entries that are not tensors ({', '.join(others[:4])}); expected {what}, "
                              "a state dict of tensors")
    return dict(loaded)


def _load(path: Path, what: str) -> object:
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); cut short? "
                                  f"expected {what}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses a pickle that needs code to rebuild (a whole module, a custom class).
        first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "an object it may not rebuild"
        raise CheckpointError(f"{path}: the pickle needs code to load ({first}); only plain tensors are read "
                              f"(weights_only), expected {what} as a state dict or safetensors") from None
    # A file cut inside its tensor data fails torch's read at an offset past the end: OSError.
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable torch file ({str(e).splitlines()[0][:160]}); cut short? "
                              f"expected {what}") from None


def load_published(model: nn.Module, tensors: Mapping[str, torch.Tensor], key_map: KeyMap, source: str | Path,
                   what: str) -> dict[str, int]:
    """Load `tensors` (a release's, by its names) into `model` through `key_map`, strictly (see above), cast to
    the model's dtypes. Returns the counts: tensors loaded and dropped."""
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped = 0
    for key, tensor in tensors.items():
        ours = key_map.ours(key)
        if ours is None:
            dropped += 1
            continue
        if ours not in expected:
            raise CheckpointError(f"{source}: tensor {key!r} has no place in {what} (mapped to {ours!r}, which the "
                                  "model does not have): another architecture or version, or a renamed tensor")
        if ours in mapped:
            raise CheckpointError(f"{source}: tensors {origin[ours]!r} and {key!r} both map to {ours!r}")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {list(tensor.shape)}, {what} expects "
                                  f"{list(expected[ours].shape)} for {ours!r}: another configuration of the model?")
        mapped[ours], origin[ours] = tensor.to(expected[ours].dtype), key
    missing = [name for name in expected if name not in mapped]
    if missing:
        raise CheckpointError(f"{source}: lacks {len(missing)} tensor(s) {what} needs, first {missing[0]!r}: "
                              "another architecture or version, or a renamed tensor")
    model.load_state_dict(mapped, strict=True)
    return {"loaded": len(mapped), "dropped": dropped}
