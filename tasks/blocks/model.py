"""The segmentation network: a MONAI U-Net with instance normalisation.

Instance norm (MONAI's default) keeps no running statistics, so federated
averaging of the state dict is exact and Opacus needs no replacement.
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets import UNet
from torch import nn

# Parts DP-SGD may train alone (``privacy.trainable``), as patterns over MONAI UNet's
# parameter names: each level is Sequential(down, SkipConnection(deeper), up), so the
# up path is element 2 of every level; the head is the top level's up layer (the last
# transposed convolution and the convolution giving the class logits).
UNET_PARTS = {"decoder": r"(^|\.)(model|submodule)\.2\.", "head": r"^model\.2\."}


def unet_arguments(settings: dict[str, Any], out_channels: int) -> dict[str, Any]:
    """MONAI ``UNet``'s arguments for the settings (what ``build_network`` builds and a MONAI
    bundle's ``network_def`` names)."""
    channels = list(settings["channels"])
    return {"spatial_dims": 2 if settings["network"] == "unet2d" else 3, "in_channels": 1,
            "out_channels": out_channels, "channels": channels,
            "strides": [2] * (len(channels) - 1), "num_res_units": settings["res_units"],
            "norm": ["instance", {"affine": settings["norm_affine"]}]}


def build_network(settings: dict[str, Any], out_channels: int) -> nn.Module:
    """U-Net mapping (B, 1, *S) images to (B, out_channels, *S) logits; S is 2D or 3D and each
    spatial size must be divisible by 2 ** (len(channels) - 1)."""
    arguments = unet_arguments(settings, out_channels)
    return UNet(**{**arguments, "norm": tuple(arguments["norm"])})
