"""AdamW with no-decay parameter groups, and warmup + decay schedules counted in optimizer steps."""

import torch
from torch import nn
from transformers import get_scheduler


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


# Our shape names → transformers' (`SchedulerType`); a cosine with a floor is its own scheduler there.
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, shape: str,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' schedule, to step exactly once per optimizer step, on every process.

    Linear warmup from 0 (the factor of optimizer step s, counted from 0, is s / warmup_steps: the first
    step runs at 0), then cosine decay to `min_ratio` or linear decay to 0 at `total_steps`, or constant.
    It is deliberately not passed through `Accelerator.prepare`, whose wrapper steps it once per process
    and so ends warmup N times early on N GPUs.
    """
    if shape not in SCHEDULES:
        raise ValueError(f"unknown schedule shape {shape!r}: use one of {', '.join(SCHEDULES)}")
    if not min_ratio:
        return get_scheduler(SCHEDULES[shape], optimizer, num_warmup_steps=warmup_steps,
                             num_training_steps=total_steps)
    if shape != "cosine":
        # transformers' only linear decay to a floor (warmup_stable_decay) also starts its warmup at the floor.
        raise ValueError(f"a min_ratio ({min_ratio}) needs the cosine schedule, not {shape!r}")
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps, scheduler_specific_kwargs={"min_lr_rate": min_ratio})
