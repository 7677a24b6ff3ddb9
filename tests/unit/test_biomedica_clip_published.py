"""biomedica_clip's `evaluate --weights` loader against open_clip's own code.

tests/fixtures/biomedica_clip/open_clip_tiny.safetensors was made once by the script stored in its `how`
metadata, which imports open_clip alone (no medrepro on the path; open_clip and torch versions in the
metadata): a tiny open_clip CLIP with every tensor random, saved under open_clip's names as a release is
(`release.*`), a fixed image and token batch (`input.*`) and open_clip's features for them (`output.*`).
A release written in open_clip's layouts must load through `load_published` to open_clip's features
(tolerance 1e-5, float32); a tensor renamed or reshaped in it must be refused with one line naming it.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from experiments.biomedica_clip.config import BiomedicaClipConfig
from experiments.biomedica_clip.evaluate import load_published
from experiments.biomedica_clip.model import WEIGHTS, model_dir, write_tiny_model
from medrepro.errors import CheckpointError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "biomedica_clip" / "open_clip_tiny.safetensors"
TOLERANCE = 1e-5


def fixture() -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(FIXTURE), "pt") as f:
        metadata = f.metadata()
    return metadata, load_file(FIXTURE)


def config_of_the_fixture(tmp_path: Path) -> BiomedicaClipConfig:
    """The smoke profile's way to name a local architecture: the fixture's, written by `write_tiny_model`."""
    metadata, _ = fixture()
    cfg = BiomedicaClipConfig()
    cfg.paths.prepared = str(tmp_path / "prepared")
    cfg.model.name, cfg.model.tiny = "biomedica-tiny", json.loads(metadata["model_cfg"])
    write_tiny_model(model_dir(cfg), cfg.model.tiny, seed=1)  # other weights than the release's
    return cfg


def release(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("release."): v for k, v in tensors.items() if k.startswith("release.")}


@pytest.mark.parametrize("layout", ["hf-hub directory", "safetensors file", "torch .bin file"])
def test_a_release_in_open_clips_layouts_gives_open_clips_features(tmp_path, layout):
    cfg = config_of_the_fixture(tmp_path)
    _, tensors = fixture()
    weights = {"hf-hub directory": tmp_path / "release", "safetensors file": tmp_path / "model.safetensors",
               "torch .bin file": tmp_path / "open_clip_pytorch_model.bin"}[layout]
    if layout == "hf-hub directory":
        weights.mkdir()
        save_file(release(tensors), weights / WEIGHTS)
    elif layout == "safetensors file":
        save_file(release(tensors), weights)
    else:
        torch.save(release(tensors), weights)
    model, _, _ = load_published(cfg, weights)
    with torch.no_grad():
        image_features = model.encode_image(tensors["input.images"])
        text_features = model.encode_text(tensors["input.tokens"])
    assert torch.allclose(image_features, tensors["output.image_features"], atol=TOLERANCE, rtol=0)
    assert torch.allclose(text_features, tensors["output.text_features"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("change, named", [
    (lambda t: t.update({"visual.conv1.kernel": t.pop("visual.conv1.weight")}), "'visual.conv1.kernel'"),
    (lambda t: t.update({"text_projection": t["text_projection"][:, :32]}), "'text_projection' has shape [64, 32]"),
    (lambda t: t.pop("logit_scale"), "first 'logit_scale'"),
])
def test_a_release_with_one_tensor_renamed_reshaped_or_missing_is_refused_by_name(tmp_path, change, named):
    cfg = config_of_the_fixture(tmp_path)
    tensors = {k: v.contiguous() for k, v in release(fixture()[1]).items()}
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / WEIGHTS)
    with pytest.raises(CheckpointError, match=re.escape(named)) as refused:
        load_published(cfg, tmp_path / WEIGHTS)
    assert "\n" not in str(refused.value) and "an open_clip checkpoint of biomedica-tiny" in str(refused.value)
