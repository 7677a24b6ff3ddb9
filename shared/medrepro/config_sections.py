"""Config sections every experiment shares: training, tracking, health, runtime and pretrained encoders.

Plain dataclasses with no heavy imports, so that a command loads and checks its config in a fraction
of a second, before torch is imported (and before the runtime settings below must be in force).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from medrepro.errors import ConfigError


# Range checks for the sections' __post_init__: the loader turns their ValueError into one line naming
# the file (or the override) and the section, so each message names the key within its section.
def check_positive(values: Mapping[str, float | Sequence[float]]) -> None:
    """Every number, and every item of a list of numbers, above 0."""
    for name, value in values.items():
        if isinstance(value, Sequence):
            if not all(item > 0 for item in value):
                raise ValueError(f"{name} must all be positive, got {list(value)}")
        elif value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def check_not_negative(values: Mapping[str, float]) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")


def check_range(name: str, value: float, low: float, high: float, *, open_low: bool = False,
                open_high: bool = False) -> None:
    """`value` within [low, high]; an open end excludes its bound, as the message writes it."""
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def check_span(name: str, span: Sequence[int], least: int) -> None:
    """A (low, high) pair drawn from inclusively: least <= low <= high."""
    low, high = span
    if not least <= low <= high:
        raise ValueError(f"{name} must be [low, high] with {least} <= low <= high, got {list(span)}")


def check_split(split: Sequence[float]) -> None:
    """Train, validation and test fractions: each split needs patients, and together they are all of them."""
    if not all(0 < f < 1 for f in split) or not math.isclose(sum(split), 1.0):
        raise ValueError(f"split must be three fractions in (0, 1) summing to 1, got {list(split)}")


@dataclass
class TrackingConfig:
    tensorboard: bool = True
    mlflow: bool = False
    # Empty means a local file store shared by the experiment's runs, <paths.runs>/mlruns (a loop run
    # without an experiment's config: inside its run directory), so nothing leaves the machine by default.
    mlflow_tracking_uri: str = ""
    # Empty means the experiment's name (the package its config lives in); "medrepro" for a loop run without one.
    mlflow_experiment: str = ""
    # Weights & Biases, through Accelerate's tracker. The API key is read by wandb from WANDB_API_KEY
    # (or its own login file) and never appears in a config, log or manifest; WANDB_MODE=offline
    # keeps the run on disk (inside the run directory) for a later `wandb sync`.
    wandb: bool = False
    wandb_project: str = "medrepro"
    # `evaluate` also logs the test metrics (as test/<name>) into the trackers of the run it evaluated.
    # Off by default: it writes into the run directory, the train stage's output and the evaluate
    # stage's input, which a pipeline stage must not change. Turn it on when evaluating by hand.
    test_metrics: bool = False


@dataclass
class HealthConfig:
    """Thresholds of the training health monitor (`medrepro.health`); a 0 turns a sign off.

    The defaults suit any loss; experiments set the signs that need to know their model: the chance
    level of the in-batch accuracy their loss reports as `acc` (1 / batch for a contrastive loss) and
    the clamp of the logit scale they report as `logit_scale`.
    """

    enabled: bool = True
    # The seed's "loss above 100".
    loss_max: float = 100.0
    # Flat: the epoch-mean loss moved less than flat_tolerance (relative) over flat_epochs epochs while
    # still above flat_above × the first epoch's loss (a converged loss is flat too, but low).
    flat_epochs: int = 3
    flat_tolerance: float = 0.01
    flat_above: float = 0.5
    # In-batch training accuracy within chance_margin (relative) of chance_acc for chance_epochs epochs.
    chance_acc: float = 0.0
    chance_epochs: int = 3
    chance_margin: float = 0.5
    # The exponentiated logit scale within logit_scale_tolerance (relative) of its clamp.
    logit_scale_max: float = 0.0
    logit_scale_tolerance: float = 0.01
    # The epoch-mean loss rising by more than this fraction from one epoch to the next.
    oscillation_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in ("loss_max", "flat_epochs", "flat_tolerance", "flat_above", "chance_acc", "chance_epochs",
                     "chance_margin", "logit_scale_max", "logit_scale_tolerance", "oscillation_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"health.{name} must be 0 or more, got {getattr(self, name)}")
        if self.chance_acc >= 1:
            raise ValueError(f"health.chance_acc is an accuracy below 1, got {self.chance_acc}")


@dataclass
class TrainConfig:
    epochs: float = 1.0
    # Global samples per optimizer step, summed over processes and accumulation micro-steps.
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    clip_grad_norm: float = 0.0
    precision: Literal["no", "fp16", "bf16"] = "no"
    eval_every_epochs: float = 1.0
    save_every_steps: int = 0
    keep_last: int = 3
    best_metric: str = "val/loss"
    best_mode: Literal["min", "max"] = "min"
    # Evaluations without improvement before stopping; 0 never stops early.
    early_stopping_patience: int = 0
    log_every_steps: int = 10
    # Consecutive optimizer steps with a non-finite (nan or inf) loss tolerated before the run stops:
    # 0 stops at the first; N > 0 rides out N in a row, e.g. the steps an fp16 grad scaler skips while it
    # lowers its scale. No checkpoint is ever written while the model's weights are not all finite.
    nonfinite_patience: int = 0
    num_workers: int = 0
    deterministic: bool = True
    # Resume a checkpoint although the settings that define the run changed (more epochs, another lr):
    # the changes are printed and recorded in the manifest. Without it such a resume is refused.
    allow_config_change: bool = False
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    def __post_init__(self) -> None:
        # Ranges and meaning, not only types: each of these once ran on and failed later, or silently.
        check_positive({"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                        "lr": self.lr, "eval_every_epochs": self.eval_every_epochs,
                        "log_every_steps": self.log_every_steps, "keep_last": self.keep_last})
        check_not_negative({"weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                            "warmup_epochs": self.warmup_epochs, "clip_grad_norm": self.clip_grad_norm,
                            "save_every_steps": self.save_every_steps, "num_workers": self.num_workers,
                            "early_stopping_patience": self.early_stopping_patience,
                            "nonfinite_patience": self.nonfinite_patience})
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of grad_accum {self.grad_accum}")


@dataclass
class RuntimeConfig:
    """How the process computes, set before torch loads (see `medrepro.runtime`).

    A profile whose numbers are committed fixes both: the thread count decides the order of parallel
    sums, and the CPU kernel level decides the vector width of every reduction, so either one left
    free changes the last bits of a result from one machine to the next.
    """

    # Intra-op CPU threads for torch, OpenMP and MKL; 0 keeps their default (one per core).
    threads: int = 0
    # CPU kernels of torch, oneDNN, MKL, numpy and OpenBLAS: "portable" pins each to an AVX2-level,
    # vendor-neutral code path, so every x86-64 machine with AVX2 (Intel or AMD, with AVX-512 or
    # not) computes the same bits; "" lets each machine use its fastest kernels.
    cpu_kernels: Literal["", "portable"] = ""

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"runtime.threads must be 0 (the default) or positive, got {self.threads}")


@dataclass
class TinyBertConfig:
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512
    max_position: int = 128
    lowercase: bool = True
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive({"hidden_size": self.hidden_size, "layers": self.layers, "heads": self.heads,
                        "intermediate_size": self.intermediate_size, "vocab_size": self.vocab_size,
                        "max_position": self.max_position})
        check_range("dropout", self.dropout, 0.0, 1.0, open_high=True)
        # BERT splits the hidden size evenly over the heads (transformers refuses it when building).
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of heads {self.heads}")


@dataclass
class OutputPaths:
    """The paths every experiment's `paths` section has, derived from the experiment's name (the package
    its config is declared in, experiments/<name>/): `runs/<name>` and `results/<name>` unless set,
    as a container pointing them at a mounted volume does."""

    runs: str = ""
    results: str = ""

    def __post_init__(self) -> None:
        package = type(self).__module__.split(".")
        if package[0] == "experiments" and len(package) > 2:
            self.runs = self.runs or f"runs/{package[1]}"
            self.results = self.results or f"results/{package[1]}"


@dataclass
class EncoderConfig:
    """Where an experiment's pretrained encoder comes from."""

    # A hub id (full profiles) or a local directory in `save_pretrained` layout.
    path: str
    # When set, the experiment's `prepare` builds a tiny BERT at `path` from its synthetic text (smoke profiles).
    tiny: TinyBertConfig | None = None


def encoder_path(encoders: Mapping[str, EncoderConfig], variant: str) -> str:
    """The encoder a variant starts from, `encoders.<variant>.path`; one line for a variant the config lacks."""
    if variant not in encoders:
        raise ConfigError(f"the config has no encoders.{variant}; it defines {', '.join(sorted(encoders))}")
    return encoders[variant].path
