"""The exmed_bert config: one YAML file per profile (configs/smoke.yaml, configs/full.yaml)."""

from dataclasses import dataclass, field
from typing import Literal

from medrepro.config_sections import RuntimeConfig, TrainConfig


@dataclass
class PathsConfig:
    dataset: str = "data/exmed_bert/dataset"
    clinvec: str = "data/exmed_bert/clinvec"
    pretrained: str = "data/exmed_bert/pretrained"
    runs: str = "runs/exmed_bert"
    results: str = "results/exmed_bert"


@dataclass
class DataConfig:
    source: Literal["synthetic", "json"] = "synthetic"
    # The patients file in the import format (README, Data): a JSON array, or JSON lines for big inputs.
    patients: str = ""
    # A bad code stops the conversion listing the first few (`stop`), or is dropped and counted (`drop`).
    on_bad_code: Literal["stop", "drop"] = "stop"
    # Each patient's `index_date` (`field`): events on or after it are left out, so nothing recorded
    # after the prediction time reaches the model. `none` uses every event: only for data already cut.
    index_date: Literal["field", "none"] = "field"
    # ICD-10-CM codes that the bundled table (April 2026 release) no longer has, from older releases:
    # their nearest ancestor in the table (`ancestor`), dropped (`drop`), or bad codes (`stop`, which
    # then follows on_bad_code). Counted in summary.json either way.
    retired_icd: Literal["ancestor", "drop", "stop"] = "ancestor"
    synthetic_patients: int = 400
    # Visits per synthetic patient, drawn uniformly between the two (inclusive); a visit holds about
    # 4.5 positions (codes and its [SEP]), so [120, 130] fills data.max_length 512.
    synthetic_visits: tuple[int, int] = (3, 8)
    # Share of the synthetic codes that ClinVec does not hold (they take an ancestor's vector).
    novel_code_probability: float = 0.3
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    max_length: int = 64
    # Which end of a too-long sequence is kept: the most recent visits (`keep_last`) or the first ones.
    truncation: Literal["keep_last", "keep_first"] = "keep_last"
    # Codes seen fewer times than this in the training split map to [UNK].
    min_count: int = 1


@dataclass
class ClinVecConfig:
    # The directory with ClinVec_{vocab}.csv and ClinGraph_nodes.csv; empty in smoke (synthetic files).
    directory: str = ""
    vocabularies: list[str] = field(default_factory=lambda: ["icd10cm", "atc", "cpt"])
    # Novel codes take the nearest ancestor's vector (ICD-10-CM hierarchy, ATC levels; CPT has none).
    hierarchical: bool = True
    resize: Literal["auto", "truncate", "pca", "learned_projection", "pad_smart", "pad_random"] = "auto"
    # Below this share of the vocabulary's codes found in ClinVec (directly or through an ancestor),
    # the clinvec stage stops: clinvec_init would silently be random_init.
    min_coverage: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage is a share in [0, 1], got {self.min_coverage}")


@dataclass
class ModelConfig:
    preset: Literal["tiny", "small", "medium", "large", "custom"] = "tiny"
    # Used by `custom` only; the presets fix them (README, Model).
    hidden_size: int = 32
    layers: int = 1
    heads: int = 1
    intermediate_size: int = 64
    dropout: float = 0.1
    init: Literal["orthogonal", "xavier", "kaiming"] = "xavier"  # upstream: orthogonal (README, Deviations)
    max_age: int = 120
    max_visits: int = 512


@dataclass
class PretrainConfig:
    mask_probability: float = 0.15
    # The prolonged-length-of-stay head: stay longer than `plos_days` days.
    plos: bool = True
    plos_days: int = 7
    # Cross-entropy weights of the PLOS classes (no, yes): upstream's pretraining script uses (0.25, 1.0)
    # for its unbalanced stays.
    plos_class_weights: tuple[float, float] = (0.25, 1.0)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if min(self.plos_class_weights) <= 0:
            raise ValueError(f"plos_class_weights must be positive, got {list(self.plos_class_weights)}")


@dataclass
class BaselineConfig:
    rf_trees: int = 200
    rf_max_depth: int = 0  # 0: unlimited
    xgb_trees: int = 200
    xgb_max_depth: int = 4
    xgb_learning_rate: float = 0.1


@dataclass
class EvalConfig:
    batch_size: int = 256
    threshold: float = 0.5
    max_fpr: float = 0.2
    bootstrap: int = 1000
    alpha: float = 0.05


@dataclass
class ExMedBertConfig:
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clinvec: ClinVecConfig = field(default_factory=ClinVecConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    # Fine-tuning of the endpoint (best checkpoint by validation F1).
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
