"""The exmed_bert config: one YAML file per profile (configs/smoke.yaml, configs/full.yaml)."""

from dataclasses import dataclass, field
from typing import Literal

from medrepro.config_sections import (
    OutputPaths,
    RuntimeConfig,
    TrainConfig,
    check_not_negative,
    check_positive,
    check_range,
    check_span,
    check_split,
)


@dataclass
class PathsConfig(OutputPaths):
    prepared: str = "data/exmed_bert/prepared"
    clinvec: str = "data/exmed_bert/clinvec"
    pretrained: str = "data/exmed_bert/pretrained"


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

    def __post_init__(self) -> None:
        check_positive({"synthetic_patients": self.synthetic_patients, "min_count": self.min_count})
        check_span("synthetic_visits", self.synthetic_visits, 1)
        check_range("novel_code_probability", self.novel_code_probability, 0.0, 1.0)
        check_split(self.split)
        # A truncated sequence keeps [CLS] and max_length - 1 positions after it.
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and a code), got {self.max_length}")


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
        check_range("min_coverage", self.min_coverage, 0.0, 1.0)


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

    def __post_init__(self) -> None:
        check_positive({"hidden_size": self.hidden_size, "layers": self.layers, "heads": self.heads,
                        "intermediate_size": self.intermediate_size, "max_age": self.max_age,
                        "max_visits": self.max_visits})
        check_range("dropout", self.dropout, 0.0, 1.0, open_high=True)
        # The presets' sizes divide; custom ones must too (attention splits the hidden size over the heads).
        if self.preset == "custom" and self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of heads {self.heads}")


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
        # 0 would still mask one code per patient (mask_codes' minimum): a typo, not a setting.
        check_range("mask_probability", self.mask_probability, 0.0, 1.0, open_low=True)
        check_not_negative({"plos_days": self.plos_days})
        check_positive({"plos_class_weights": self.plos_class_weights})


@dataclass
class BaselineConfig:
    rf_trees: int = 200
    rf_max_depth: int = 0  # 0: unlimited
    xgb_trees: int = 200
    xgb_max_depth: int = 4
    xgb_learning_rate: float = 0.1

    def __post_init__(self) -> None:
        check_positive({"rf_trees": self.rf_trees, "xgb_trees": self.xgb_trees, "xgb_max_depth": self.xgb_max_depth})
        check_not_negative({"rf_max_depth": self.rf_max_depth})
        check_range("xgb_learning_rate", self.xgb_learning_rate, 0.0, 1.0, open_low=True)


@dataclass
class EvalConfig:
    batch_size: int = 256
    threshold: float = 0.5
    max_fpr: float = 0.2
    bootstrap: int = 1000
    alpha: float = 0.05

    def __post_init__(self) -> None:
        check_positive({"batch_size": self.batch_size, "bootstrap": self.bootstrap})
        check_range("threshold", self.threshold, 0.0, 1.0, open_low=True, open_high=True)
        # The partial ROC-AUC's bound, as sklearn's roc_auc_score takes it.
        check_range("max_fpr", self.max_fpr, 0.0, 1.0, open_low=True)
        check_range("alpha", self.alpha, 0.0, 1.0, open_low=True, open_high=True)


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
