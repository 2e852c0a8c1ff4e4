"""One pass of local training, the same loop for every task: only the loss of a batch differs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.device import autocast


def train_steps(model: nn.Module, batches: Iterable[Any], optimizer: torch.optim.Optimizer,
                device: torch.device, batch_loss: Callable[[nn.Module, Any], torch.Tensor],
                max_steps: int | None = None,
                penalty: Callable[[nn.Module], torch.Tensor] | None = None) -> dict[str, float]:
    """Optimiser steps on ``batch_loss(model, batch)`` (under mixed precision on CUDA) plus
    ``penalty(model)``, at most ``max_steps``; returns the mean loss and the step count."""
    model.train()
    losses = []
    for step, batch in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = batch_loss(model, batch)
        if penalty is not None:
            loss = loss + penalty(model)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_steps": float(len(losses))}
