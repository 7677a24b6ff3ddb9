"""The open_clip model: a built-in name with a pretrained tag or file (full), or the tiny model that
`prepare` writes locally (smoke).

The tiny model is written twice over, for the two ways open_clip finds a model offline: an open_clip
local directory (`open_clip_config.json` + `open_clip_model.safetensors`, its "pretrained" weights),
which open_clip_train reads with `--model local-dir:DIR` in its own process, and a registered config
`biomedica-tiny.json`, so that any process can call
`open_clip.add_model_config(DIR / "biomedica-tiny.json")` and then
`open_clip.create_model_and_transforms("biomedica-tiny", pretrained=CHECKPOINT)`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch import nn

from experiments.biomedica_clip.config import BiomedicaClipConfig
from medrepro import atomic
from medrepro.device import default_device
from medrepro.errors import ConfigError

TINY_NAME = "biomedica-tiny"
WEIGHTS = "open_clip_model.safetensors"


def model_dir(cfg: BiomedicaClipConfig) -> Path:
    return Path(cfg.paths.prepared) / "model"


def write_tiny_model(directory: Path, model_cfg: dict[str, Any], seed: int) -> None:
    """Initialise the tiny CLIP with `seed` and save it in both layouts (see the module docstring)."""
    try:
        torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
    except TypeError as e:
        raise ConfigError(f"model.tiny is not an open_clip CLIP config: {e}", "model.tiny") from None
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": {}})
    atomic.write_json(directory / f"{TINY_NAME}.json", model_cfg)
    atomic.write_with(directory / WEIGHTS, lambda tmp: save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp)))


def trainer_model_args(cfg: BiomedicaClipConfig, place: Callable[[Path], str]) -> list[str]:
    """open_clip_train's --model (and --pretrained) for this config; `place` writes a local path as the
    trainer must see it."""
    if cfg.model.tiny:
        return ["--model", f"local-dir:{place(model_dir(cfg))}"]
    args = ["--model", cfg.model.name]
    if cfg.model.pretrained:
        pretrained = Path(cfg.model.pretrained)
        args += ["--pretrained", place(pretrained) if pretrained.is_file() else cfg.model.pretrained]
    return args


def load(cfg: BiomedicaClipConfig, weights: str | Path | None) -> tuple[nn.Module, Any, Any]:
    """(model in eval mode on the default device, validation transform, tokenizer) with `weights` (an
    open_clip_train checkpoint), or the starting weights (the pretrained ones) when None."""
    if cfg.model.tiny:
        open_clip.add_model_config(model_dir(cfg) / f"{TINY_NAME}.json")
        name, pretrained = TINY_NAME, str(weights or model_dir(cfg) / WEIGHTS)
    else:
        name, pretrained = cfg.model.name, str(weights or cfg.model.pretrained) or None
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device="cpu")
    model.to(default_device()).eval()
    return model, preprocess, open_clip.get_tokenizer(name)

