"""The grading network: the crop classifier with two heads' logits in one output."""

from __future__ import annotations

from typing import Any

from torch import nn

from tasks.blocks.crops import crop_classifier

GRADES = 5  # Pfirrmann 1-5
SEVERITIES = 3  # RSNA: normal/mild, moderate, severe


def build_network(settings: dict[str, Any]) -> nn.Module:
    """(B, 3, H, W) sagittal crops to (B, 8) logits: Pfirrmann grades 1-5, then stenosis
    severities."""
    return crop_classifier(settings, GRADES + SEVERITIES)
