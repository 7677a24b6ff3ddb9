"""Range checks of every experiment's config: a value outside its meaningful range stops the load with one
line naming the key, and every shipped config still loads. Config modules only: no torch here."""

from pathlib import Path

import pytest

from experiments.biomedica_clip.config import BiomedicaClipConfig
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.ct_clip.config import CtClipConfig
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.retclip.config import RetClipConfig
from medrepro.config import load_config
from medrepro.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CLASSES: dict[str, type] = {"retclip": RetClipConfig, "cross_encoder": CrossEncoderConfig, "ct_clip": CtClipConfig,
                            "exmed_bert": ExMedBertConfig, "biomedica_clip": BiomedicaClipConfig}


def row(experiment: str, override: str, fragment: str, *before: str):
    """One bad override on the smoke profile, after `before` (overrides that set up the case)."""
    return pytest.param(experiment, [*before, override], fragment, id=f"{experiment}:{override}")


ROWS = [
    # The two cases.
    row("exmed_bert", "baselines.xgb_trees=0", "xgb_trees must be positive, got 0"),
    row("biomedica_clip", "data.upsampling=1::x", "upsampling '1::x' must be numbers joined with `::`"),
    # Shared sections (medrepro.config_sections).
    row("retclip", "train.nonfinite_patience=-1", "nonfinite_patience must be 0 or more"),
    row("retclip", "train.min_lr_ratio=1.5", "min_lr_ratio must lie in [0, 1]"),
    row("retclip", "encoders.pubmedbert.tiny.heads=3", "hidden_size 64 must be a multiple of heads 3"),
    row("retclip", "encoders.pubmedbert.tiny.dropout=1.0", "dropout must lie in [0, 1)"),
    row("cross_encoder", "biencoder.tiny.vocab_size=0", "vocab_size must be positive"),
    # retclip
    row("retclip", "data.synthetic_patients=0", "synthetic_patients must be positive"),
    row("retclip", "data.split=[0.8, 0.1, 0.2]", "split must be three fractions in (0, 1) summing to 1"),
    row("retclip", "data.split=[1.0, 0.0, 0.0]", "split must be three fractions in (0, 1) summing to 1"),
    row("retclip", "data.lmdb_image_size=0", "lmdb_image_size must be positive"),
    row("retclip", "data.jpeg_quality=101", "jpeg_quality must lie in [0, 100]"),
    row("retclip", "model.embed_dim=0", "embed_dim must be positive"),
    row("retclip", "model.context_length=-1", "context_length must be positive"),
    row("retclip", "model.init_logit_scale=9.0", "init_logit_scale must lie in [0, 6.90776]"),
    row("retclip", "model.init_logit_scale=-1", "init_logit_scale must lie in [0,"),
    row("retclip", "eval.bootstrap=0", "bootstrap must be positive"),
    row("retclip", "eval.alpha=1.0", "alpha must lie in (0, 1)"),
    row("retclip", "seeds=[0, 0]", "seeds must be a non-empty list of distinct integers"),
    row("retclip", "seeds=[]", "seeds must be a non-empty list of distinct integers"),
    # cross_encoder
    row("cross_encoder", "data.synthetic_documents=0", "synthetic_documents must be positive"),
    row("cross_encoder", "data.context_words=-1", "context_words must be 0 or more"),
    row("cross_encoder", "index.hnsw_m=0", "hnsw_m must be positive"),
    row("cross_encoder", "index.ivf_nprobe=0", "ivf_nprobe must be positive"),
    row("cross_encoder", "index.max_length=0", "max_length must be positive"),
    row("cross_encoder", "mining.candidates=0", "candidates must be positive"),
    row("cross_encoder", "mining.hard_top_k=65", "hard_top_k must lie in [1, 64]"),
    row("cross_encoder", "mining.hard_threshold=1.5", "hard_threshold must lie in [-1, 1]"),
    row("cross_encoder", "mining.type_per_positive=-1", "type_per_positive must be 0 or more"),
    row("cross_encoder", "mining.random_per_positive=0", "training needs negatives",
        "mining.hard_per_positive=0", "mining.type_per_positive=0"),
    row("cross_encoder", "eval.threshold=1.0", "threshold must lie in (0, 1)"),
    row("cross_encoder", "eval.high_confidence=0", "high_confidence must lie in (0, 1]"),
    row("cross_encoder", "eval.calibration_bins=0", "calibration_bins must be positive"),
    row("cross_encoder", "eval.alpha=0", "alpha must lie in (0, 1)"),
    row("cross_encoder", "eval.rerank_top_k=65", "eval.rerank_top_k 65 is more than the mining.candidates 64"),
    row("cross_encoder", "max_length=0", "max_length must be positive"),
    row("cross_encoder", "bench.index_sizes=[1000, 0]", "index_sizes must all be positive"),
    row("cross_encoder", "bench.index_latent_dim=1000", "index_latent_dim must lie in [1, 768]"),
    row("cross_encoder", "bench.index_kinds=[hnsw_int8]", "index_kinds: 'hnsw_int8' is not hnsw or ivf"),
    row("cross_encoder", "bench.approximate_max_names=-1", "approximate_max_names must be 0 or more"),
    # ct_clip
    row("ct_clip", "data.synthetic.scans=9", "scans must lie in [1, 8]"),
    row("ct_clip", "data.synthetic.slices=[36, 24]", "slices must be [low, high] with 1 <= low <= high"),
    row("ct_clip", "data.synthetic.spacing_z=[]", "spacing_xy and spacing_z need a spacing each"),
    row("ct_clip", "data.synthetic.spacing_xy=[1.0, -1.0]", "spacing_xy must all be positive"),
    row("ct_clip", "data.synthetic.prevalence=0", "prevalence must lie in (0, 1)"),
    row("ct_clip", "data.spacing=[1.5, 1.5, 0]", "spacing must all be positive"),
    row("ct_clip", "data.shape=[0, 48, 48]", "shape must all be positive"),
    row("ct_clip", "data.shard_samples=0", "shard_samples must be positive"),
    row("ct_clip", "data.workers=0", "workers must be positive"),
    row("ct_clip", "model.dim_head=0", "dim_head must be positive"),
    row("ct_clip", "model.init_temperature=5.0", "init_temperature 5.0 is above max_temperature"),
    row("ct_clip", "eval.selection_patients=0", "selection_patients must be positive"),
    row("ct_clip", "eval.alpha=1.5", "alpha must lie in (0, 1)"),
    # exmed_bert
    row("exmed_bert", "baselines.rf_trees=0", "rf_trees must be positive"),
    row("exmed_bert", "baselines.rf_max_depth=-1", "rf_max_depth must be 0 or more"),
    row("exmed_bert", "baselines.xgb_max_depth=0", "xgb_max_depth must be positive"),
    row("exmed_bert", "baselines.xgb_learning_rate=0", "xgb_learning_rate must lie in (0, 1]"),
    row("exmed_bert", "data.synthetic_patients=0", "synthetic_patients must be positive"),
    row("exmed_bert", "data.synthetic_visits=[8, 3]", "synthetic_visits must be [low, high] with 1 <= low <= high"),
    row("exmed_bert", "data.novel_code_probability=1.5", "novel_code_probability must lie in [0, 1]"),
    row("exmed_bert", "data.split=[0.6, 0.3, 0.2]", "split must be three fractions in (0, 1) summing to 1"),
    row("exmed_bert", "data.max_length=1", "max_length must be at least 2"),
    row("exmed_bert", "data.min_count=0", "min_count must be positive"),
    row("exmed_bert", "clinvec.min_coverage=1.5", "min_coverage must lie in [0, 1]"),
    row("exmed_bert", "model.dropout=1.0", "dropout must lie in [0, 1)"),
    row("exmed_bert", "model.max_visits=0", "max_visits must be positive"),
    row("exmed_bert", "model.preset=custom", "hidden_size 32 must be a multiple of heads 3", "model.heads=3"),
    row("exmed_bert", "pretrain.mask_probability=0", "mask_probability must lie in (0, 1]"),
    row("exmed_bert", "pretrain.plos_days=-1", "plos_days must be 0 or more"),
    row("exmed_bert", "pretrain.plos_class_weights=[0, 1]", "plos_class_weights must all be positive"),
    row("exmed_bert", "pretrain.train.lr=0", "lr must be positive"),
    row("exmed_bert", "eval.threshold=0", "threshold must lie in (0, 1)"),
    row("exmed_bert", "eval.max_fpr=0", "max_fpr must lie in (0, 1]"),
    row("exmed_bert", "eval.max_fpr=1.5", "max_fpr must lie in (0, 1]"),
    row("exmed_bert", "eval.bootstrap=0", "bootstrap must be positive"),
    # biomedica_clip
    row("biomedica_clip", "data.upsampling=1::nan", "upsampling '1::nan' must hold positive factors"),
    row("biomedica_clip", "data.upsampling=1::0", "upsampling '1::0' must hold positive factors"),
    row("biomedica_clip", "data.upsampling=1::4", "which only source 'shards' reads"),
    row("biomedica_clip", "data.upsampling=1::2::3", "has 3 factors for the 2 `::` sources of data.train",
        "data.source=shards", "data.train=a/000000.tar::b/000000.tar"),
    row("biomedica_clip", "data.min_image_side=-1", "min_image_side must be 0 or more"),
    row("biomedica_clip", "data.synthetic.samples_per_shard=0", "samples_per_shard must be positive"),
    row("biomedica_clip", "data.synthetic.jpeg_quality=101", "jpeg_quality must lie in [0, 100]"),
    row("biomedica_clip", "train.lock_text_unlocked_layers=-1", "lock_text_unlocked_layers must be 0 or more"),
    row("biomedica_clip", "eval.template=a figure", "must hold {label}, where each class goes"),
    row("biomedica_clip", "eval.template=a {kind} of {label}", "may hold only {label} in braces"),
    row("biomedica_clip", "eval.bootstrap=0", "bootstrap must be positive"),
    row("biomedica_clip", "eval.alpha=0", "alpha must lie in (0, 1)"),
]


@pytest.mark.parametrize(("experiment", "overrides", "fragment"), ROWS)
def test_an_out_of_range_value_is_one_line_naming_the_key(experiment, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(CLASSES[experiment], EXPERIMENTS / experiment / "configs" / "smoke.yaml", overrides)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert message.startswith("override '"), f"blamed on the file, not the override: {message}"
    key = overrides[-1].partition("=")[0]
    assert key.rsplit(".", 1)[-1] in message, f"the key {key} is not named: {message}"


def test_every_experiment_has_rows():
    assert {param.values[0] for param in ROWS} == set(CLASSES)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*/configs/*.yaml")), ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_shipped_config_loads(path):
    load_config(CLASSES[path.parts[-3]], path)


@pytest.mark.parametrize("cls", CLASSES.values(), ids=list(CLASSES))
def test_the_defaults_pass_their_own_checks(cls):
    cls()
