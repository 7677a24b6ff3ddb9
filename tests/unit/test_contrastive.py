"""The in-batch accuracy the health monitor reads for the contrastive experiments (retclip, ct_clip)."""

import torch

from medrepro.contrastive import in_batch_accuracy


def test_scored_by_cosine_like_the_loss():
    """Row 0's own pair is the most similar by cosine, though another row has the larger dot product
    (a raw dot product, as retclip's copy used, scores it 0.5)."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert in_batch_accuracy(a, b).item() == 1.0


def test_chance_and_perfect():
    features = torch.eye(4)
    assert in_batch_accuracy(features, features).item() == 1.0
    assert in_batch_accuracy(features, features.roll(1, dims=0)).item() == 0.0


def test_records_no_gradient():
    a = torch.randn(3, 5, requires_grad=True)
    assert not in_batch_accuracy(a, torch.randn(3, 5)).requires_grad
