"""Symmetric InfoNCE over features gathered from every process.

Each process computes the loss over the whole global batch: features from the other processes are
gathered with their autograd graph, so the gradient equals the single-process gradient at the same
global batch (DDP's gradient average cancels the world-size factor the gather's backward adds).
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate `features` from all processes in rank order; identity on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    return torch.cat(dist_nn.all_gather(features), dim=0)


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss: mean of a→b and b→a cross-entropy over L2-normalised features; row i matches row i."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = logit_scale.exp() * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@torch.no_grad()
def in_batch_accuracy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Share of rows of `a` whose most similar row of `b`, by the cosine the loss scores, is their own
    pair: the training health monitor's sign that a contrastive model learns (chance 1 / batch)."""
    similarity = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    return (similarity.argmax(dim=1) == torch.arange(a.shape[0], device=a.device)).float().mean()
