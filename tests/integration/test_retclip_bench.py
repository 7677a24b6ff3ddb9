"""retclip's benchmark parts (d) and (e) at tiny sizes: the full-size training data path against the
full profile's training step, and the scaling of build-lmdb. Rates are checked for sense, never
against the clock."""

import base64
import io
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from experiments.retclip.bench import BuildScaling, FullSizeSizes, build_scaling, full_size_data
from experiments.retclip.config import RetClipConfig
from experiments.retclip.data import open_split
from medrepro import config

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "retclip" / "configs"


def profile(name: str) -> RetClipConfig:
    return config.load_config(RetClipConfig, CONFIGS / f"{name}.yaml")


def test_full_size_data_path_reports_loading_per_worker_count_against_the_training_step(tmp_path):
    before = dict(os.environ)
    sizes = FullSizeSizes(patients=16, loader_batch_size=4, workers=(0, 1), compute_batch_size=1, repeats=1)
    result = full_size_data(profile("smoke"), tmp_path, sizes)

    rates, setting = result["rates"], result["setting"]["data_224"]
    loading = {w: rates[f"data_224_samples_per_s_workers_{w}"] for w in (0, 1)}
    compute = rates["data_224_compute_samples_per_s"]
    assert all(0 < rate < math.inf for rate in [*loading.values(), compute])
    assert result["ratios"]["data_224_ratio"] == pytest.approx(max(loading.values()) / compute)
    assert setting["bound"] == ("compute" if result["ratios"]["data_224_ratio"] >= 1 else "loading")
    fed = [w for w, rate in loading.items() if rate >= compute]
    assert setting["workers"] == [0, 1] and setting["workers_needed"] == (min(fed) if fed else None)

    # The full profile's shapes: eyes stored at its LMDB side, cropped to ViT-B-16's 224 px by its transform.
    full = profile("full")
    assert setting["lmdb_image_size"] == full.data.lmdb_image_size
    assert setting["batch_shape"] == [1, 3, 224, 224] and setting["vision_model"] == "ViT-B-16"
    imgs, pairs, _ = open_split(tmp_path / "lmdb" / "train")
    assert len(pairs) == setting["train_pairs"] >= 2 * sizes.loader_batch_size
    for b64 in imgs.get(next(imgs.keys())):
        with Image.open(io.BytesIO(base64.urlsafe_b64decode(b64))) as eye:
            assert eye.format == "JPEG" and eye.size == (full.data.lmdb_image_size,) * 2

    # Measured in a fresh interpreter under the full profile's runtime (no pinned kernels or threads),
    # while this process keeps its own.
    assert setting["runtime"]["env"] == {} and setting["runtime"]["torch_threads"] >= 1
    assert dict(os.environ) == before


def test_build_lmdb_scaling_reports_seconds_per_size_and_an_exponent(tmp_path):
    cfg = profile("smoke")
    result = build_scaling(cfg, tmp_path, BuildScaling(scales=(1, 2, 4), base_patients=8, repeats=1))

    rates, setting = result["rates"], result["setting"]["build_lmdb"]
    assert all(0 < rates[f"build_lmdb_seconds_x{s}"] < math.inf for s in (1, 2, 4))
    for exponent in ("", "_x1_x2", "_x2_x4"):
        assert math.isfinite(rates[f"build_lmdb_scaling_exponent{exponent}"])
    assert setting["patients"] == [8, 16, 32] and setting["image_size"] == cfg.data.lmdb_image_size == 48
    assert setting["generate_seconds"] > 0
    # Each size is a real build-lmdb output of that many patients.
    for scale, n in zip((1, 2, 4), setting["patients"], strict=True):
        lmdb = tmp_path / f"x{scale}" / "lmdb"
        assert sum(len(open_split(lmdb / split)[0]) for split in ("train", "valid", "test")) == n
    imgs = open_split(tmp_path / "x4" / "lmdb" / "train")[0]
    with Image.open(io.BytesIO(base64.urlsafe_b64decode(imgs.get(next(imgs.keys()))[0]))) as eye:
        assert eye.size == (48, 48)
