"""The training loop every experiment shares, on Hugging Face Accelerate.

One function, `fit`, that a reader can hold in their head:

    for each optimizer step (global batch = batch_size samples over all processes and micro-steps):
        for each of grad_accum micro-batches: forward, loss / grad_accum, backward (no DDP sync
        until the last one)
        clip, optimizer step, scheduler step (once, on every process), after_step hook
        every log_every_steps: progress line + trackers
        at every epoch's end: health signs (see `medrepro.health`), one sync
        every eval_every_epochs (fractional) and at the end: evaluate, keep the best, early stopping,
        checkpoint; every save_every_steps: checkpoint
        before each of those: stop if the loss diverged (see `_Divergence`); before each checkpoint:
        stop if any weight is not finite

The experiment supplies the model, a map-style dataset, a collate function, `loss_fn(model, batch)`
and optionally `evaluate(model)` and `after_step(model)`. `loss_fn` returns the loss and a dict of extras
(logged as `train/<name>`); the extras `acc` (in-batch training accuracy) and `logit_scale` (the
exponentiated scale) also feed the health monitor. A dataset with `set_epoch(epoch)` is told the
epoch before each epoch's loader is built. Epochs, warmup and evaluation intervals are
given in epochs and converted to optimizer steps from the dataset size and the global batch, which
already counts processes and accumulation, so the schedule is the same on 1 or 8 GPUs.
"""

import atexit
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, send_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from medrepro import atomic, checkpoint, config, optim, repro, run_guard, tracking
from medrepro.config_sections import TrainConfig
from medrepro.errors import CheckpointError, ConfigError, TrainingError
from medrepro.health import EpochStats, HealthMonitor
from medrepro.rundir import RunDir
from medrepro.sampling import StepBatchSampler, steps_per_epoch
from medrepro.tracking import Progress, RunTrackers


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_value: float | None = None
    best_step: int = -1
    evals_without_improvement: int = 0
    stopped_early: bool = False
    # The health monitor's epochs and fired signs (`HealthMonitor.state`), so a resumed run keeps them.
    health: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class FitResult:
    state: TrainState
    # Wall time of the training loop (evaluations and checkpoints included, setup excluded).
    loop_seconds: float
    # Training samples per second of training time: evaluation and checkpoint time excluded.
    samples_per_s: float
    # Seconds of the loop spent evaluating and checkpointing.
    eval_checkpoint_seconds: float = 0.0
    # Health signs that fired (`medrepro.health.HealthWarning` as dicts); empty for a healthy run.
    health: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclass
class Schedule:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int

    @classmethod
    def from_config(cls, cfg: TrainConfig, n_samples: int) -> "Schedule":
        spe = steps_per_epoch(n_samples, cfg.batch_size)
        if spe == 0:
            raise ConfigError(f"train.batch_size {cfg.batch_size} is larger than the {n_samples} training samples: "
                              "lower train.batch_size", "train.batch_size")
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * spe)
        return cls(
            steps_per_epoch=spe,
            total_steps=max(1, math.ceil(cfg.epochs * spe)),
            warmup_steps=warmup,
            eval_every=max(1, round(cfg.eval_every_epochs * spe)),
        )


LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def make_accelerator(precision: str, log_with: list | None = None,
                     project_dir: str | Path | None = None) -> Accelerator:
    """An Accelerator that also runs multi-process on CPU, with the given trackers.

    Accelerate uses gloo across CPU processes only when told `cpu=True`; without it, on a machine
    with no GPU, every process started by torchrun would silently train alone as the main process.
    """
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(), log_with=log_with or None,
                       project_dir=project_dir)


def _end_process_group() -> None:
    """At process exit, not after each fit: Accelerate's state is one per process, and a command that
    fits twice (pretraining, then fine-tuning) would find the group of its first fit destroyed."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(_end_process_group)


def fit(
    model: nn.Module,
    train_set: Dataset,
    cfg: TrainConfig,
    run: RunDir | str | Path,
    *,
    loss_fn: LossFn,
    seed: int,
    collate_fn: Callable | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    resume: str | None = None,
    run_name: str = "run",
    run_config: Any = None,
    data: Sequence[str | Path] = (),
    variant: str = "",
) -> FitResult:
    """Train; `run_config` (the experiment's resolved config) and the checksums of `data` are written
    beside the run as config.yaml and manifest.json once the run is known to be valid (a refused
    resume changes nothing). The main process holds the run directory's lock throughout, and marks
    the run complete last."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    trackers = tracking.build_trackers(tracking.for_experiment(cfg.tracking, run_config), run.path, run_name)
    accelerator = make_accelerator(cfg.precision, trackers, run.path)
    with ExitStack() as held:
        if accelerator.is_main_process:
            held.enter_context(run.locked())
        try:
            session = _setup(model, train_set, cfg, run, accelerator, seed=seed, resume=resume, run_name=run_name,
                             run_config=run_config, data=data, variant=variant)
            result = _loop(session, loss_fn=loss_fn, collate_fn=collate_fn, evaluate=evaluate,
                           after_step=after_step)
            _finish(session, result, run_name, variant)
            return result
        except BaseException:
            # A stopped run closes its trackers too: an MLflow run would otherwise stay "running" forever.
            for tracker in accelerator.trackers:
                tracker.finish()
            raise


@dataclass
class _Session:
    """What the loop works with, built by `_setup`."""

    cfg: TrainConfig
    run: RunDir
    accelerator: Accelerator
    model: nn.Module  # prepared (DDP-wrapped where distributed)
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    manager: checkpoint.CheckpointManager
    schedule: Schedule
    state: TrainState
    identity: dict[str, Any]
    train_set: Dataset
    seed: int
    tracker: RunTrackers | None  # the main process's
    last_checkpoint: Path | None  # the newest checkpoint known good: where a diverged run can go back to


def _setup(model: nn.Module, train_set: Dataset, cfg: TrainConfig, run: RunDir, accelerator: Accelerator, *,
           seed: int, resume: str | None, run_name: str, run_config: Any, data: Sequence[str | Path],
           variant: str) -> _Session:
    """Checks, optimizer and schedule, the resumed state, the run's config and manifest, trackers, banner."""
    repro.seed_everything(seed, cfg.deterministic)
    if accelerator.is_main_process:
        # Temporaries of a run killed mid-write; only the main process writes here, so none is in use.
        atomic.clean_orphans(run.path)
        atomic.clean_orphans(run.checkpoints)
    if resume is None and run.step_checkpoints():
        raise CheckpointError(f"{run.checkpoints} already holds checkpoints: pass --resume latest to continue "
                              "that run, or choose another output directory")
    if cfg.batch_size % (cfg.grad_accum * accelerator.num_processes):
        raise ConfigError(f"train.batch_size {cfg.batch_size} must be a multiple of train.grad_accum "
                          f"({cfg.grad_accum}) × processes ({accelerator.num_processes})", "train.batch_size")
    # The data checksums are computed once, on the main process, and shared: every process then
    # makes the same decision about a resume.
    checksums = [{str(p): repro.sha256_tree(p) for p in data} if accelerator.is_main_process else None]
    checksums = broadcast_object_list(checksums)[0]
    # A loop without an experiment's config around it (tests) stands for its training section alone.
    params = config.to_dict(run_config) if run_config is not None else {"train": dataclasses.asdict(cfg)}
    current = run_guard.identity(run_config if run_config is not None else params, variant, checksums)
    schedule = Schedule.from_config(cfg, len(train_set))
    optimizer = optim.build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = optim.build_scheduler(optimizer, schedule.warmup_steps, schedule.total_steps, cfg.schedule,
                                      cfg.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    state, changes, last_checkpoint = TrainState(), [], None
    if resume is not None:
        last_checkpoint = checkpoint.resolve_resume(resume, run.checkpoints)
        # The key as this command spells it (train.…, or pretrain.train.… for a second training section).
        section = config.key_of(run_config, cfg) if run_config is not None else None
        state, changes = _restore(last_checkpoint, raw_model, optimizer, scheduler, accelerator, current,
                                  cfg.allow_config_change, f"{section or 'train'}.allow_config_change")

    tracker = None
    if accelerator.is_main_process:
        run.begin(run_config if run_config is not None else cfg, variant=variant, checksums=checksums,
                  extra={"processes": accelerator.num_processes, "distributed": str(accelerator.distributed_type),
                         "identity": current["hash"], "resumed_from_step": state.step if resume is not None else None,
                         "config_changes_allowed": changes})
        tracker = RunTrackers(accelerator, run.path, run_name, tracking.hparams(params, variant, seed),
                              state.step if resume is not None else None)
        n_params = sum(p.numel() for p in raw_model.parameters())
        n_trainable = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
        Progress.emit(
            f"train {run_name}: run dir {run.path.resolve()} | device {accelerator.device} | "
            f"{accelerator.num_processes} process(es) | parameters {n_params:,} ({n_trainable:,} trainable) | "
            f"{len(train_set):,} training samples | {schedule.total_steps:,} optimizer steps "
            f"({schedule.steps_per_epoch:,} an epoch; batch {cfg.batch_size} = "
            f"{cfg.batch_size // cfg.grad_accum // accelerator.num_processes} × {cfg.grad_accum} "
            f"accumulation × {accelerator.num_processes} process(es))"
            + (f" | resuming at step {state.step}" if resume is not None else ""))
    manager = checkpoint.CheckpointManager(run.checkpoints, cfg.keep_last, cfg.best_metric, cfg.best_mode)
    return _Session(cfg, run, accelerator, model, raw_model, optimizer, scheduler, manager, schedule, state,
                    current, train_set, seed, tracker, last_checkpoint)


def _loop(s: _Session, *, loss_fn: LossFn, collate_fn: Callable | None, evaluate: Callable | None,
          after_step: Callable | None) -> FitResult:
    """The training loop (see the module's docstring)."""
    cfg, state, accelerator, model = s.cfg, s.state, s.accelerator, s.model
    running_loss = torch.zeros((), device=accelerator.device)
    running_steps = 0
    divergence = _Divergence(cfg.nonfinite_patience, accelerator.device)
    monitor = HealthMonitor(cfg.health, state.health)
    epoch_stats = EpochStats(accelerator.device)
    start_step, t_start = state.step, time.perf_counter()

    with Progress(s.schedule.total_steps, state.step, cfg.batch_size, s.schedule.steps_per_epoch,
                  show=accelerator.is_main_process) as progress:
        model.train()
        while state.step < s.schedule.total_steps and not state.stopped_early:
            loader = _epoch_loader(s.train_set, cfg, accelerator, s.seed, state.epoch, state.step_in_epoch, collate_fn)
            micro_batches = iter(loader)
            for _ in range(s.schedule.steps_per_epoch - state.step_in_epoch):
                extras: dict[str, torch.Tensor] = {}
                step_loss = torch.zeros((), device=accelerator.device)
                for micro in range(cfg.grad_accum):
                    batch = send_to_device(next(micro_batches), accelerator.device)
                    sync = micro == cfg.grad_accum - 1
                    with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                        loss, extras = loss_fn(model, batch)
                    accelerator.backward(loss / cfg.grad_accum)
                    running_loss += loss.detach() / cfg.grad_accum
                    step_loss += loss.detach()
                epoch_stats.add(step_loss / cfg.grad_accum, extras)
                if cfg.clip_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                s.optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    s.scheduler.step()
                s.optimizer.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step(s.raw_model)
                state.step += 1
                state.step_in_epoch += 1
                running_steps += 1
                progress.advance(state.step)
                divergence.update(state.step, step_loss)

                last = state.step == s.schedule.total_steps
                if cfg.health.enabled and (state.step_in_epoch == s.schedule.steps_per_epoch or last):
                    _check_health(monitor, epoch_stats, state, accelerator)
                logging = state.step % cfg.log_every_steps == 0 or last
                evaluating = evaluate is not None and (state.step % s.schedule.eval_every == 0 or last)
                saving = evaluating or bool(cfg.save_every_steps and state.step % cfg.save_every_steps == 0) or last
                if logging or saving:
                    divergence.check(accelerator, s.last_checkpoint)
                if saving:  # before evaluating too: metrics of non-finite weights fail in confusing ways
                    _require_finite_weights(s.raw_model, state.step, s.last_checkpoint)
                if logging:
                    mean_loss = accelerator.reduce(running_loss, "mean").item() / running_steps
                    running_loss.zero_()
                    running_steps = 0
                    _log(s, progress, mean_loss, extras)

                t_pause = time.perf_counter()
                if evaluating:
                    _evaluate_and_track(s, evaluate)
                if saving:
                    _save(s, track_best=evaluating)
                if evaluating or saving:
                    progress.pause(time.perf_counter() - t_pause)
                if last or state.stopped_early:
                    break
            else:
                state.epoch += 1
                state.step_in_epoch = 0

    return FitResult(state, time.perf_counter() - t_start,
                     (state.step - start_step) * cfg.batch_size / max(progress.training_seconds(), 1e-9),
                     progress.paused, monitor.report())


def _finish(s: _Session, result: FitResult, run_name: str, variant: str) -> None:
    """Final weights, fit.json, health into the manifest, the completion mark; then every process ends."""
    if s.accelerator.is_main_process:
        state = s.state
        # The weights of the last step checkpoint (or of the one resumed from), already checked finite.
        s.run.save_final({"model": s.raw_model.state_dict(), "identity": s.identity,
                          "train_state": dataclasses.asdict(state)})
        atomic.write_json(s.run.fit_file, dataclasses.asdict(result))
        s.run.add_to_manifest({"health": result.health})
        s.run.mark_complete(variant, s.identity["hash"], state.step, state.best_step)
        Progress.emit(_summary(run_name, result, s.cfg, s.run))
    if s.tracker is not None:
        s.tracker.close()
    s.accelerator.wait_for_everyone()
    for tracker in s.accelerator.trackers:
        tracker.finish()


def _log(s: _Session, progress: Progress, mean_loss: float, extras: dict[str, torch.Tensor]) -> None:
    if s.tracker is None:
        return
    lr = s.scheduler.get_last_lr()[0]
    shown = {k: float(v.detach().float().mean()) for k, v in extras.items()}
    Progress.emit(progress.line(s.state.step, mean_loss, lr, shown))
    s.tracker.log(s.state.step, {"train/loss": mean_loss, "train/lr": lr,
                                 **{f"train/{k}": v for k, v in shown.items()}})


def _summary(run_name: str, result: FitResult, cfg: TrainConfig, run: RunDir) -> str:
    state = result.state
    best = (f"best {cfg.best_metric} {state.best_value:.4g} at step {state.best_step} "
            f"({run.best.resolve()})" if state.best_step >= 0 else "no evaluation, no best checkpoint")
    health = (f"{len(result.health)} health warning(s): {', '.join(w['sign'] for w in result.health)}"
              if result.health else "no health warnings")
    return (f"done {run_name}: step {state.step}" + (" (stopped early)" if state.stopped_early else "")
            + f" | {best} | final weights {run.final.resolve()} | wall {tqdm.format_interval(result.loop_seconds)} "
            f"(evaluation and checkpoints {tqdm.format_interval(result.eval_checkpoint_seconds)}) | "
            f"{result.samples_per_s:.1f} training samples/s | {health}")


def _check_health(monitor: HealthMonitor, stats: EpochStats, state: TrainState, accelerator: Accelerator) -> None:
    """At an epoch's end (or the last step): one collective, then the signs on every process alike."""
    record = stats.reduce(accelerator, state.epoch, state.step) if stats.steps else None
    if record is not None:
        fired = monitor.end_epoch(record)
        if accelerator.is_main_process:
            for warning in fired:
                Progress.emit(f"WARNING training health, step {warning.step} (epoch {warning.epoch}): "
                              f"{warning.message}")
        state.health = monitor.state()
    stats.reset()


def _epoch_loader(train_set: Dataset, cfg: TrainConfig, accelerator: Accelerator, seed: int, epoch: int,
                  start_step: int, collate_fn: Callable | None) -> DataLoader:
    if hasattr(train_set, "set_epoch"):
        # Randomness inside the dataset (masking, augmentation) keyed by the epoch, as the batch order is,
        # so a resumed run draws exactly what an uninterrupted one would.
        train_set.set_epoch(epoch)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.grad_accum, accelerator.process_index,
                               accelerator.num_processes, seed, epoch, start_step)
    # Its own generator: building a loader must not draw from the global stream dropout uses.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers,
                      generator=generator, pin_memory=accelerator.device.type == "cuda")


def _evaluate_and_track(s: _Session, evaluate: Callable) -> None:
    """Evaluate on the main process; every process learns whether to stop."""
    state, cfg = s.state, s.cfg
    decision = [None]
    if s.accelerator.is_main_process:
        s.model.eval()
        with torch.no_grad():
            metrics = evaluate(s.raw_model)
        s.model.train()
        if cfg.best_metric not in metrics:
            raise KeyError(f"best_metric {cfg.best_metric!r} is not among the evaluation metrics "
                           f"{sorted(metrics)}")
        value = float(metrics[cfg.best_metric])
        improved = s.manager.is_better(value, state.best_value)
        if improved:
            state.best_value, state.best_step, state.evals_without_improvement = value, state.step, 0
        else:
            state.evals_without_improvement += 1
        patience = cfg.early_stopping_patience
        state.stopped_early = bool(patience and state.evals_without_improvement >= patience)
        if s.tracker is not None:
            s.tracker.log(state.step, metrics)
            Progress.emit(f"eval step {state.step}: " + " | ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
        decision = [dataclasses.asdict(state)]
    decision = broadcast_object_list(decision)
    for key, value in decision[0].items():
        setattr(state, key, value)


class _Divergence:
    """Counts consecutive optimizer steps with a non-finite loss on the device, so that a step costs no
    GPU sync; `check` syncs once and stops the run once more than `patience` came in a row."""

    def __init__(self, patience: int, device: torch.device):
        self.patience = patience
        self.streak = torch.zeros((), dtype=torch.long, device=device)
        # The first step at which the streak passed the patience (-1: none yet), and its loss.
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def update(self, step: int, loss: torch.Tensor) -> None:
        self.streak = torch.where(torch.isfinite(loss), 0, self.streak + 1)
        first = (self.streak > self.patience) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss.float(), self.loss)

    def check(self, accelerator: Accelerator, last_checkpoint: Path | None) -> None:
        # Gathered, so that every process stops together even when only one saw the bad loss.
        steps = accelerator.gather(self.step.reshape(1)).tolist()
        if max(steps) < 0:
            return
        losses = accelerator.gather(self.loss.reshape(1)).tolist()
        step, loss = min((step, loss) for step, loss in zip(steps, losses, strict=True) if step >= 0)
        raise TrainingError(f"training diverged: loss is {loss} at step {step} (train.nonfinite_patience "
                            f"{self.patience}); lower train.lr, set train.clip_grad_norm or check the data, "
                            f"and train again; {_last_good(last_checkpoint)}")


def _last_good(last_checkpoint: Path | None) -> str:
    if last_checkpoint is None:
        return "no checkpoint of this run was written"
    return f"the last good checkpoint is {last_checkpoint}"


def _require_finite_weights(raw_model: nn.Module, step: int, last_checkpoint: Path | None) -> None:
    """Refuse to checkpoint non-finite weights (one sync): they would poison every resume from them."""
    floats = [t for t in raw_model.state_dict().values() if t.is_floating_point()]
    if floats and not torch.stack([torch.isfinite(t).all() for t in floats]).all().item():
        raise TrainingError(f"training diverged: model weights are not finite at step {step}, not checkpointed; "
                            "lower train.lr, set train.clip_grad_norm or check the data, and train again; "
                            f"{_last_good(last_checkpoint)}")


def _save(s: _Session, track_best: bool) -> None:
    accelerator, state = s.accelerator, s.state
    rng_states = gather_object([repro.rng_state()]) if accelerator.num_processes > 1 else [repro.rng_state()]
    if accelerator.is_main_process:
        payload = {
            "model": s.raw_model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": rng_states,
            "train_state": dataclasses.asdict(state),
            "identity": s.identity,
        }
        path = s.manager.save_step(state.step, payload)
        if track_best and state.best_step == state.step:
            s.manager.save_best(path, s.run.best)
    accelerator.wait_for_everyone()
    s.last_checkpoint = s.manager.step_path(state.step)


def _restore(path: Path, raw_model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             accelerator: Accelerator, current: dict[str, Any], allow_change: bool, allow_key: str
             ) -> tuple[TrainState, list[str]]:
    saved = checkpoint.load(path)
    changes = run_guard.check_resume(saved.get("identity"), current, path, allow_change, allow_key)
    try:
        raw_model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if accelerator.scaler is not None and saved["scaler"] is not None:
            accelerator.scaler.load_state_dict(saved["scaler"])
        rng = saved["rng"]
        if len(rng) != accelerator.num_processes:
            raise CheckpointError(f"{path} was written by {len(rng)} processes; resume it with the same number "
                                  f"(now {accelerator.num_processes})")
        repro.set_rng_state(rng[accelerator.process_index])
        state = TrainState(**saved["train_state"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this run: {str(e).splitlines()[0][:200]}") from None
    Progress.emit(f"resumed from {path} at step {state.step} (epoch {state.epoch}, "
                  f"step {state.step_in_epoch} of the epoch)"
                  + (f"; deliberate config changes: {'; '.join(changes)}" if changes else ""))
    return state, changes
