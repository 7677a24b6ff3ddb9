"""The biomedica_clip config: one YAML file per profile (configs/smoke.yaml, configs/full.yaml), plus
configs/bmca_clip.yaml (BMCA-CLIP's continual-pretraining setting) for `--config`."""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from experiments.biomedica_clip.metadata import OLD_NAMES
from medrepro.config_sections import OutputPaths, RuntimeConfig, check_not_negative, check_positive, check_range
from medrepro.rundir import RunDir


@dataclass
class PathsConfig(OutputPaths):
    # Synthetic shards (train/, heldout/), their CSV twin (csv/) and, in smoke, the tiny model (model/).
    prepared: str = "data/biomedica_clip/prepared"
    # What `audit` found: report.json (counts per shard, bad samples) and the SHA-256 manifest.
    audited: str = "data/biomedica_clip/audited"


@dataclass
class SyntheticConfig:
    train_shards: int = 4
    # 10,000 in the real BIOMEDICA layout; a few dozen in smoke.
    samples_per_shard: int = 256
    heldout_samples: int = 256
    image_size: int = 32
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        check_positive({"train_shards": self.train_shards, "samples_per_shard": self.samples_per_shard,
                        "heldout_samples": self.heldout_samples, "image_size": self.image_size})
        check_range("jpeg_quality", self.jpeg_quality, 0, 100)  # PIL's scale


@dataclass
class DataConfig:
    source: Literal["synthetic", "shards"] = "synthetic"
    # Real shards: brace notation, several sources joined with `::`, e.g.
    # "/data/a/{000000..000099}.tar::/data/b/{000000..000009}.tar" (ignored for `synthetic`).
    train: str = ""
    # One upsampling factor per source, joined with `::` ("1::4"); needs train.dataset_resampled.
    upsampling: str = ""
    # The held-out shards that evaluate reads (zero-shot classes from their json labels, retrieval).
    heldout: str = ""
    # The metadata field whose value is a held-out sample's class for zero-shot. BIOMEDICA's labels are
    # lists of strings; a sample counts only when its list holds exactly one (see metadata.single_label).
    label_field: str = "image_primary_label"
    # The archive's own filters, applied by `audit`: images of this many pixels or fewer per side,
    # and captions equal to one of these (after stripping) are bad samples.
    min_image_side: int = 21
    bad_captions: list[str] = field(default_factory=lambda: ["", "No caption found"])
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.label_field in OLD_NAMES:
            raise ValueError(f"label_field {self.label_field!r} is not a BIOMEDICA field: use "
                             f"{OLD_NAMES[self.label_field]!r}")
        check_not_negative({"min_image_side": self.min_image_side})
        if self.upsampling:
            self._check_upsampling()

    def _check_upsampling(self) -> None:
        """open_clip_train splits --train-data-upsampling-factors on `::`, reads each part with float() and
        asserts one per `::` source of --train-data; only shard sources reach it (a synthetic run ignores
        the factors), and the archive's sources want positive ones."""
        parts = self.upsampling.split("::")
        try:
            factors = [float(part) for part in parts]
        except ValueError:
            raise ValueError(f"upsampling {self.upsampling!r} must be numbers joined with `::`, e.g. 1::4") from None
        if not all(math.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"upsampling {self.upsampling!r} must hold positive factors")
        if self.source != "shards":
            raise ValueError(f"upsampling weights the `::` sources of data.train, which only source 'shards' reads "
                             f"(source is {self.source!r})")
        sources = len(self.train.split("::"))
        if len(factors) != sources:
            raise ValueError(f"upsampling {self.upsampling!r} has {len(factors)} factors for the {sources} `::` "
                             "sources of data.train: give one each")


@dataclass
class ModelConfig:
    # An open_clip model name (ViT-B-32) or, in smoke, the tiny model that prepare writes as an open_clip
    # local directory (open_clip_config.json + weights) under <paths.prepared>/model.
    name: str = "ViT-B-32"
    # An open_clip pretrained tag, a weights file, or "" (ignored for the local tiny model, whose
    # directory holds its "pretrained" weights).
    pretrained: str = ""
    # The tiny model's config (smoke): embed_dim, vision_cfg, text_cfg as open_clip reads them.
    tiny: dict[str, Any] = field(default_factory=dict)
    tiny_seed: int = 0


@dataclass
class TrainConfig:
    """open_clip_train's options (python -m open_clip_train.main --help); names follow its flags."""

    dataset_type: Literal["webdataset", "csv", "synthetic"] = "webdataset"
    dataset_resampled: bool = False
    # Samples per epoch; 0 reads sizes.json beside the (first source's) shards.
    train_num_samples: int = 0
    # Per process.
    batch_size: int = 500
    epochs: int = 32
    lr: float = 5e-6
    wd: float = 0.1
    warmup: int = 1000
    precision: Literal["amp", "amp_bf16", "bf16", "fp16", "fp32", "pure_bf16", "pure_fp16"] = "amp"
    accum_freq: int = 1
    grad_clip_norm: float = 0.0
    grad_checkpointing: bool = False
    local_loss: bool = False
    gather_with_grad: bool = False
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    # Patch dropout comes from the model config; set 0.0 for a final phase without it (null: keep).
    force_patch_dropout: float | None = None
    save_frequency: int = 1
    # DataLoader workers per process; webdataset needs shards >= workers × processes.
    workers: int = 4
    # Processes on this node (torchrun when > 1); nodes > 1 only through the README's launchers.
    processes: int = 1
    device: Literal["cuda", "cpu"] = "cuda"
    log_every_n_steps: int = 100
    tensorboard: bool = True
    # W&B logging; the key comes from the environment (WANDB_API_KEY), never from this config.
    wandb: bool = False
    wandb_project: str = "biomedica-clip"
    # More open_clip_train flags, verbatim (e.g. ["--lr-scheduler", "const"]).
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_positive({"batch_size": self.batch_size, "epochs": self.epochs, "lr": self.lr,
                        "accum_freq": self.accum_freq, "processes": self.processes,
                        "log_every_n_steps": self.log_every_n_steps})
        check_not_negative({"wd": self.wd, "warmup": self.warmup, "workers": self.workers,
                            "train_num_samples": self.train_num_samples, "save_frequency": self.save_frequency,
                            "grad_clip_norm": self.grad_clip_norm,
                            "lock_image_unlocked_groups": self.lock_image_unlocked_groups,
                            "lock_text_unlocked_layers": self.lock_text_unlocked_layers})
        if self.force_patch_dropout is not None:
            check_range("force_patch_dropout", self.force_patch_dropout, 0.0, 1.0, open_high=True)
        if self.gather_with_grad and not self.local_loss:
            raise ValueError("gather_with_grad goes with local_loss (open_clip's --local-loss --gather-with-grad)")


@dataclass
class EvalConfig:
    batch_size: int = 256
    bootstrap: int = 1000
    alpha: float = 0.05
    # Zero-shot prompt; {label} is the class label from the metadata.
    template: str = "a figure showing {label}"

    def __post_init__(self) -> None:
        check_positive({"batch_size": self.batch_size, "bootstrap": self.bootstrap})
        check_range("alpha", self.alpha, 0.0, 1.0, open_low=True, open_high=True)
        # evaluate fills it with str.format(label=...): any other field fails there, and a template
        # without {label} gives every class the same prompt.
        try:
            differs = self.template.format(label="a") != self.template.format(label="b")
        except (KeyError, IndexError, ValueError, AttributeError):
            raise ValueError(f"template {self.template!r} may hold only {{label}} in braces "
                             "(double them for literal ones)") from None
        if not differs:
            raise ValueError(f"template {self.template!r} must hold {{label}}, where each class goes")


@dataclass
class BiomedicaClipConfig:
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# open_clip_train's own layout inside our run directory (its `--logs ./logs --name open_clip`):
# out.log, params.txt, checkpoints/epoch_N.pt, checkpoints/results.jsonl, tensorboard/.
OPEN_CLIP_NAME = "open_clip"
# The run's identity (what a resume must match): open_clip's checkpoints cannot carry it.
IDENTITY_FILE = "identity.json"


def logs_dir(run: RunDir) -> Path:
    return run / "logs" / OPEN_CLIP_NAME


def checkpoint_path(run: RunDir, epoch: int) -> Path:
    return logs_dir(run) / "checkpoints" / f"epoch_{epoch}.pt"
