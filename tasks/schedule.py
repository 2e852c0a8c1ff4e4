"""Learning-rate schedules of a training run."""

from __future__ import annotations

import math

import torch


def run_share(epoch: int, epochs: int, elapsed: float, budget: float) -> float:
    """Share (0-1) of a run behind after ``epoch`` of ``epochs``: by epochs, or by time
    (``elapsed`` of ``budget`` seconds; 0 = no budget) if the budget runs out first."""
    share = epoch / epochs
    if budget > 0:
        share = max(share, elapsed / budget)
    return min(share, 1.0)


def cosine_lr(base: float, share: float) -> float:
    """``base`` decayed to 0 along a half cosine, ``share`` (0-1) of the way through."""
    return base * 0.5 * (1.0 + math.cos(math.pi * share))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
