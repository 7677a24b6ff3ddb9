"""Signs of an unhealthy training run, checked once per epoch by the shared loop.

The signs a contrastive (or any) run gives when it goes wrong, with thresholds from
`TrainConfig.health` (`HealthConfig`):

    loss_max      the epoch's mean loss is above `loss_max` (the seed's "loss above 100")
    flat          the epoch-mean loss changed by less than `flat_tolerance` (relative) over the last
                  `flat_epochs` epochs while still above `flat_above` × the first epoch's loss: stuck,
                  not converged
    chance        the in-batch training accuracy (the loss function's `acc` extra) stayed within
                  `chance_margin` (relative) of `chance_acc` for `chance_epochs` epochs
    logit_ceiling the logit scale (the loss function's `logit_scale` extra, exponentiated) reached
                  `logit_scale_max` within `logit_scale_tolerance` (relative): the temperature is
                  pinned at its clamp
    oscillation   the epoch-mean loss rose by more than `oscillation_ratio` (relative) from one epoch to
                  the next; batch-to-batch noise is not a sign (it grows as batches shrink), a trend
                  that turns up is

The loop feeds per-step values on the device (`EpochStats.add`, no sync) and hands the epoch's
reduced numbers to `HealthMonitor.end_epoch` (one sync per epoch). Each sign fires once per run:
a warning line, then a record in fit.json, the manifest and the results' info.json. The monitor's
epochs travel in every checkpoint's train state; after a resume mid-epoch, that epoch's record covers
only the steps run since, so a sign right at its threshold may fire differently than in an
uninterrupted run (the weights are the same either way).
"""

from dataclasses import asdict, dataclass
from typing import Any

import torch

from medrepro.config_sections import HealthConfig

ACC, LOGIT_SCALE = "acc", "logit_scale"


@dataclass
class HealthWarning:
    sign: str
    step: int
    epoch: int
    message: str


@dataclass
class EpochHealth:
    """One epoch's numbers, reduced over processes; `acc` and `logit_scale` are None when the loss
    function does not report them."""

    epoch: int
    step: int
    loss: float
    max_loss: float
    acc: float | None = None
    logit_scale: float | None = None


class EpochStats:
    """Per-step sums on the device, so that a step costs no sync. Steps with a non-finite loss are left
    out: the divergence check of the loop handles those."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), device=self.device)
        self.loss_sum, self.finite_steps, self.acc_sum, self.scale_max = z.clone(), z.clone(), z.clone(), z.clone()
        self.loss_max = torch.full((), -torch.inf, device=self.device)
        self.steps = self.acc_steps = self.scale_steps = 0

    def add(self, loss: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss, 0.0)
        self.finite_steps += finite.float()
        self.loss_max = torch.where(finite, torch.maximum(self.loss_max, loss), self.loss_max)
        self.steps += 1
        if ACC in extras:
            self.acc_sum += extras[ACC].detach().float().mean()
            self.acc_steps += 1
        if LOGIT_SCALE in extras:
            self.scale_max = torch.maximum(self.scale_max, extras[LOGIT_SCALE].detach().float().max())
            self.scale_steps += 1

    def reduce(self, accelerator, epoch: int, step: int) -> EpochHealth | None:
        """Every process must call this at the same step (a collective); the means are over processes.
        None when no step of the epoch had a finite loss."""
        packed = torch.stack([self.loss_sum, self.finite_steps, self.acc_sum / max(self.acc_steps, 1)])
        peaks = torch.stack([self.loss_max, self.scale_max])
        if accelerator.num_processes > 1:
            packed, peaks = accelerator.reduce(packed, "sum"), accelerator.reduce(peaks, "max")
        loss_sum, finite_steps, acc_sum = packed.tolist()
        loss_max, scale_max = peaks.tolist()
        if not finite_steps:
            return None
        acc = acc_sum / accelerator.num_processes if self.acc_steps else None
        return EpochHealth(epoch, step, loss_sum / finite_steps, loss_max, acc,
                           scale_max if self.scale_steps else None)


class HealthMonitor:
    def __init__(self, cfg: HealthConfig, state: dict[str, Any] | None = None):
        """`state`: what `state()` returned before a resume (kept in the checkpoints' train state)."""
        self.cfg = cfg
        state = state or {}
        self.epochs = [EpochHealth(**e) for e in state.get("epochs", [])]
        self.warnings = [HealthWarning(**w) for w in state.get("warnings", [])]

    def state(self) -> dict[str, Any]:
        return {"epochs": [asdict(e) for e in self.epochs], "warnings": self.report()}

    def end_epoch(self, record: EpochHealth) -> list[HealthWarning]:
        """Check the signs with this epoch added; returns the ones that fired for the first time."""
        if not self.cfg.enabled:
            return []
        self.epochs.append(record)
        fired = {w.sign for w in self.warnings}
        new = [HealthWarning(sign, record.step, record.epoch, message)
               for sign, message in self._signs(record) if sign not in fired]
        self.warnings += new
        return new

    def _signs(self, now: EpochHealth) -> list[tuple[str, str]]:
        cfg, first = self.cfg, self.epochs[0]
        found = []
        if cfg.loss_max > 0 and now.loss > cfg.loss_max:
            found.append(("loss_max", f"mean loss {now.loss:.4g} is above train.health.loss_max {cfg.loss_max:g}"))
        recent = self.epochs[-(cfg.flat_epochs + 1):]
        if cfg.flat_epochs > 0 and len(recent) == cfg.flat_epochs + 1:
            losses = [e.loss for e in recent]
            spread = (max(losses) - min(losses)) / max(abs(losses[-1]), 1e-12)
            if spread < cfg.flat_tolerance and now.loss > cfg.flat_above * first.loss:
                found.append(("flat", f"loss flat at {now.loss:.4g} for {cfg.flat_epochs} epochs (changed "
                                      f"{spread:.2%}, still above {cfg.flat_above:g} × the first epoch's "
                                      f"{first.loss:.4g})"))
        stuck = [e.acc for e in self.epochs[-cfg.chance_epochs:]] if cfg.chance_epochs > 0 else []
        if (cfg.chance_acc > 0 and len(stuck) == cfg.chance_epochs and None not in stuck
                and max(stuck) <= cfg.chance_acc * (1 + cfg.chance_margin)):
            found.append(("chance", f"in-batch training accuracy {now.acc:.3f} stuck at chance "
                                    f"({cfg.chance_acc:.3g}) for {cfg.chance_epochs} epochs"))
        if (cfg.logit_scale_max > 0 and now.logit_scale is not None
                and now.logit_scale >= cfg.logit_scale_max * (1 - cfg.logit_scale_tolerance)):
            found.append(("logit_ceiling", f"logit scale {now.logit_scale:.4g} is at its ceiling "
                                           f"train.health.logit_scale_max {cfg.logit_scale_max:g}"))
        previous = self.epochs[-2].loss if len(self.epochs) > 1 else None
        if cfg.oscillation_ratio > 0 and previous is not None and now.loss > previous * (1 + cfg.oscillation_ratio):
            found.append(("oscillation", f"loss jumped from {previous:.4g} to {now.loss:.4g} in one epoch "
                                         f"(more than train.health.oscillation_ratio {cfg.oscillation_ratio:g} up)"))
        return found

    def report(self) -> list[dict[str, Any]]:
        return [asdict(w) for w in self.warnings]
