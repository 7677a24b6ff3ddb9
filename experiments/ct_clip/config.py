"""The ct_clip config: one YAML file per profile (configs/smoke.yaml, configs/full.yaml, configs/debug.yaml)."""

from dataclasses import dataclass, field
from typing import Literal

from medrepro.config_sections import (
    EncoderConfig,
    OutputPaths,
    RuntimeConfig,
    TrainConfig,
    check_positive,
    check_range,
    check_span,
)

# Scans of a synthetic patient are lettered a to h.
MAX_SCANS = 8

# The training patients that chose the best checkpoint, in the run directory (the evaluation checks
# that none of them is evaluated).
SELECTION_FILE = "selection.json"


@dataclass
class PathsConfig(OutputPaths):
    # The CT-RATE tree (synthetic in smoke) and the tiny text encoder built beside it.
    prepared: str = "data/ct_clip/prepared"
    shards: str = "data/ct_clip/shards"


@dataclass
class SyntheticConfig:
    # Volumes per split, each written in both release conventions (v1 raw stored values, v2 already HU).
    train: int = 192
    valid: int = 48
    # Up to this many scans per patient and reconstructions per scan, drawn uniformly: 2.25 volumes per
    # patient on average (CT-RATE's validation split has about 2.3).
    scans: int = 2
    reconstructions: int = 2
    # In-plane voxels and slices of the raw volumes, before resampling.
    size_xy: int = 48
    slices: tuple[int, int] = (24, 36)
    spacing_xy: tuple[float, ...] = (1.2, 1.5, 1.8)
    spacing_z: tuple[float, ...] = (2.0, 3.0)
    prevalence: float = 0.3

    def __post_init__(self) -> None:
        check_positive({"train": self.train, "valid": self.valid, "reconstructions": self.reconstructions,
                        "size_xy": self.size_xy, "spacing_xy": self.spacing_xy, "spacing_z": self.spacing_z})
        check_range("scans", self.scans, 1, MAX_SCANS)
        check_span("slices", self.slices, 1)
        # The spacings are drawn from: an empty list has nothing to draw.
        if not self.spacing_xy or not self.spacing_z:
            raise ValueError(f"spacing_xy and spacing_z need a spacing each, got {list(self.spacing_xy)} and "
                             f"{list(self.spacing_z)}")
        # Every label needs both classes for its AUROC.
        check_range("prevalence", self.prevalence, 0.0, 1.0, open_low=True, open_high=True)


@dataclass
class DataConfig:
    source: Literal["synthetic", "ctrate"] = "synthetic"
    # The CT-RATE dataset directory: dataset/{train,valid} (v1) or dataset/{train_fixed,valid_fixed} (v2)
    # and the CSVs under dataset/radiology_text_reports, multi_abnormality_labels, metadata.
    ctrate_root: str = ""
    # Which volume tree to read: v1 ("train", "valid") or v2 ("train_fixed", "valid_fixed").
    release: Literal["v1", "v2"] = "v2"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # Preprocessing target: spacing (x, y, z) in mm and shape (slices, x, y), upstream's axis order.
    spacing: tuple[float, float, float] = (0.75, 0.75, 1.5)
    shape: tuple[int, int, int] = (240, 480, 480)
    # Samples per shard (at ~110 MB each in full, 20 make ~2.2 GB shards).
    shard_samples: int = 20
    # Processes preprocessing volumes; each holds one volume in memory at a time.
    workers: int = 4
    # The training text and the zero-shot report text come from the same fields (upstream trains on
    # Findings and evaluates on Findings + Impressions).
    report_fields: tuple[str, ...] = ("Findings_EN", "Impressions_EN")

    def __post_init__(self) -> None:
        check_positive({"spacing": self.spacing, "shape": self.shape, "shard_samples": self.shard_samples,
                        "workers": self.workers})


@dataclass
class ModelConfig:
    dim: int = 512
    patch: int = 20
    temporal_patch: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    latent: int = 512
    # The learnable temperature t (logits = exp(t) · cosine), as upstream.
    init_temperature: float = 1.0
    max_temperature: float = 4.6052  # ln(100)
    context_length: int = 512

    def __post_init__(self) -> None:
        check_positive({"dim": self.dim, "patch": self.patch, "temporal_patch": self.temporal_patch,
                        "spatial_depth": self.spatial_depth, "temporal_depth": self.temporal_depth,
                        "heads": self.heads, "dim_head": self.dim_head, "latent": self.latent,
                        "context_length": self.context_length})
        # Training clamps the temperature at max_temperature: a start above it is not the one that runs.
        if self.init_temperature > self.max_temperature:
            raise ValueError(f"init_temperature {self.init_temperature} is above max_temperature "
                             f"{self.max_temperature}")


@dataclass
class EvalConfig:
    batch_size: int = 4
    # Training patients held out to choose the best checkpoint (validation during training); the
    # validation split, which is reported, never chooses.
    selection_patients: int = 100
    bootstrap: int = 1000
    alpha: float = 0.05

    def __post_init__(self) -> None:
        check_positive({"batch_size": self.batch_size, "selection_patients": self.selection_patients,
                        "bootstrap": self.bootstrap})
        check_range("alpha", self.alpha, 0.0, 1.0, open_low=True, open_high=True)


@dataclass
class CtClipConfig:
    seed: int = 2025
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
