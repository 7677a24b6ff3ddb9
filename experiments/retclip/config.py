"""The retclip config: one YAML file per profile (configs/smoke.yaml, configs/full.yaml)."""

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from medrepro.config_sections import (
    EncoderConfig,
    OutputPaths,
    RuntimeConfig,
    TrainConfig,
    check_positive,
    check_range,
    check_split,
)
from medrepro.rundir import RunDir


@dataclass
class PathsConfig(OutputPaths):
    prepared: str = "data/retclip/prepared"
    lmdb: str = "data/retclip/lmdb"


@dataclass
class DataConfig:
    source: Literal["synthetic", "odir"] = "synthetic"
    # The ODIR-5K directory (the xlsx and "Training Images/", or Kaggle's full_df.csv layout).
    odir_root: str = ""
    # Optional `sha256sum`-format manifest of the raw files, relative to odir_root, checked in prepare.
    checksums: str = ""
    synthetic_patients: int = 400
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Side of the square JPEG stored per eye in the LMDB; the model's transform resizes from it.
    lmdb_image_size: int = 224
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        check_positive({"synthetic_patients": self.synthetic_patients, "lmdb_image_size": self.lmdb_image_size})
        check_split(self.split)
        check_range("jpeg_quality", self.jpeg_quality, 0, 100)  # PIL's scale


@dataclass
class ModelConfig:
    # The open_clip model whose vision tower is used, and overrides of its vision_cfg.
    vision_model: str = "ViT-B-16"
    vision_cfg: dict[str, Any] = field(default_factory=dict)
    # An open_clip pretrained tag or a weights file for the image tower; empty for random init.
    vision_pretrained: str = ""
    # QuickGELU in the vision tower: None follows the pretrained tag (OpenAI's weights were trained with
    # it); set it only for a weights file or random init. A value that contradicts the tag is an error.
    quick_gelu: bool | None = None
    embed_dim: int = 512
    context_length: int = 100
    init_logit_scale: float = math.log(90)
    max_logit_scale: float = math.log(100)

    def __post_init__(self) -> None:
        check_positive({"embed_dim": self.embed_dim, "context_length": self.context_length,
                        "max_logit_scale": self.max_logit_scale})
        # Training clamps the (log) scales into [0, max_logit_scale]: a start outside is not the one that runs.
        check_range("init_logit_scale", self.init_logit_scale, 0.0, self.max_logit_scale)


@dataclass
class EvalConfig:
    batch_size: int = 64
    bootstrap: int = 1000
    alpha: float = 0.05

    def __post_init__(self) -> None:
        check_positive({"batch_size": self.batch_size, "bootstrap": self.bootstrap})
        check_range("alpha", self.alpha, 0.0, 1.0, open_low=True, open_high=True)


@dataclass
class RetClipConfig:
    # The data seed: synthetic data, the patient split, bootstrap resamples.
    seed: int = 0
    # Training seeds: every encoder is trained once per seed (initialisation of the heads and of a
    # randomly initialised tower, data order, dropout), each in <run dir>/seed-<seed>/.
    seeds: list[int] = field(default_factory=lambda: [0])
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # One text encoder per variant (experiment.py lists the variants).
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The prompt templates; empty means prompts.yaml beside this module (prompts_zh.yaml for the authors'
    # released model, `evaluate --weights`, which was trained on Chinese reports).
    prompts: str = ""

    def __post_init__(self) -> None:
        # evaluate and export read seeds[0]; each seed trains into its own seed-<seed> directory.
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")


def seed_run(run: RunDir, seed: int) -> RunDir:
    """The part of a variant's run that trained with `seed` (`seeds` lists them)."""
    return run.part(f"seed-{seed}")
