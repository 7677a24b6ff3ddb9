"""AdamW with no-decay parameter groups, and warmup + decay schedules counted in optimizer steps.

The schedule is written here rather than taken from `transformers.get_scheduler`, whose decays are the
same but whose warmup starts at 0 (factor s / W for step s, so the first optimizer step does nothing)
where this one starts at 1 / W. Switching moved every committed smoke result
trained by the shared loop, and three of the checks on them (accuracy above the majority baseline for
two text encoders, a linking gain on ambiguous names) fell below their bars: the smoke runs' 128 to
1,232 steps are short enough for one warmup step to matter.
"""

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; leave biases, norms, embeddings' scalars and logit scales undecayed.

    Any parameter with fewer than two dimensions (biases, LayerNorm weights, logit scales) is in the
    no-decay group, as in BERT and CLIP training.
    """
    decay, no_decay = [], []
    for _, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    # foreach=False keeps the update order identical on every backend, so CPU runs are bitwise equal.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=False)


def lr_factor(step: int, warmup_steps: int, total_steps: int, shape: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps.

    Linear warmup from 0 over `warmup_steps`, then cosine or linear decay to `min_ratio` at
    `total_steps`, or constant.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if shape == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if shape == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif shape == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule shape {shape!r}")
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, shape: str,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler to step exactly once per optimizer step, on every process.

    It is deliberately not passed through `Accelerator.prepare`, whose wrapper steps it once per
    process and so ends warmup N times early on N GPUs.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, shape, min_ratio)
    )
