"""Training loss: Dice + cross-entropy on logits (softmax happens inside the loss)."""

from __future__ import annotations

from monai.losses import DiceCELoss
from torch import nn


def build_loss() -> nn.Module:
    """DiceCE over (B, C, *S) logits and (B, 1, *S) class-index targets."""
    return DiceCELoss(to_onehot_y=True, softmax=True)
