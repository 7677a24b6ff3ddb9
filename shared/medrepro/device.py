"""The one place that decides where evaluation and inference run."""

import torch


def default_device() -> torch.device:
    """The first GPU when one is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
