"""The grading network: a MONAI DenseNet with two heads' logits in one output."""

from __future__ import annotations

from typing import Any

from monai.networks.nets import DenseNet
from torch import nn

GRADES = 5  # Pfirrmann 1-5
SEVERITIES = 3  # RSNA: normal/mild, moderate, severe
# Parts DP-SGD may train alone (``privacy.trainable``): the classifier after the features.
PARTS = {"head": r"^class_layers\."}


def build_network(settings: dict[str, Any]) -> nn.Module:
    """DenseNet mapping (B, 3, H, W) sagittal crops to (B, 8) logits: Pfirrmann grades 1-5, then
    stenosis severities. Instance norm: no running statistics (exact averaging, DP-ready);
    ReLU not in place (Opacus' per-sample hooks need the activations)."""
    return DenseNet(spatial_dims=2, in_channels=3, out_channels=GRADES + SEVERITIES,
                    init_features=settings["init_features"],
                    growth_rate=settings["growth_rate"], block_config=tuple(settings["blocks"]),
                    act=("relu", {"inplace": False}), norm=("instance", {"affine": True}))
