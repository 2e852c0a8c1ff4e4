"""Training loss: cross-entropy over the Genant grades, a fractured vertebra weighted
``fracture_weight`` against 1 for an intact one; a missing grade (-1) adds nothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fracture_loss(logits: torch.Tensor, grade: torch.Tensor, fracture_weight: float
                  ) -> torch.Tensor:
    """Summed per-sample loss / batch size for (B, 4) logits and (B,) grades (-1 = unknown).

    Each sample's loss depends on its own logits only (needed by per-sample DP clipping)."""
    losses = F.cross_entropy(logits, grade.clamp(min=0), reduction="none")
    weights = torch.where(grade >= 1, fracture_weight, 1.0) * (grade >= 0)
    return (losses * weights).sum() / len(logits)
