"""Settings of the segmenter block: the U-Net, its preprocessing and augmentation (the
``[task]`` keys of segmentation, and those other tasks built on the segmenter take)."""

from __future__ import annotations

from dataclasses import replace

from tasks.config import Key


def _window(value: list[float]) -> str | None:
    return None if value[0] < value[1] else "must be [low, high] with low < high"


def _channels(value: list[int]) -> str | None:
    return None if len(value) >= 2 else "needs at least two levels, e.g. [16, 32, 64]"


SEGMENTER_KEYS = (
    Key("network", "str", "unet2d", "unet2d segments slice by slice (axial slices of 3D "
        "images, whole radiographs); unet3d segments patches of 3D images with "
        "sliding-window inference.", choices=("unet2d", "unet3d")),
    Key("labels", "str", "structures", "`structures`: one class per structure (vertebra, "
        "disc, canal); `levels`: one class per vertebra and disc level (T12-L5, S, "
        "T12/L1-L5/S1) plus the canal.", choices=("structures", "levels")),
    Key("modalities", "list[str]", ["CT", "MR"], "Manifest modalities this model trains on "
        "and accepts.", choices=("CT", "MR", "XR")),
    Key("channels", "list[int]", [16, 32, 64, 128], "Feature channels per U-Net level.",
        minimum=1, check=_channels),
    Key("res_units", "int", 1, "Residual units per U-Net level.", minimum=0),
    Key("norm_affine", "bool", False, "Instance norm with a learned scale and shift (FedBN "
        "then has per-hospital parameters to keep local)."),
    Key("spacing", "list[float]", [2.0, 2.0, 2.0], "Voxel spacing (mm) images are resampled "
        "to (radiographs use the first two).", length=3, minimum=0.05),
    Key("ct_window", "list[float]", [-250.0, 1250.0], "CT window in HU mapped to [0, 1].",
        length=2, check=_window),
    Key("patch_size", "list[int]", [96, 96, 64], "Training patch (2D uses the first two).",
        length=3, minimum=16),
    Key("augment", "bool", True, "Random intensity scale/shift, noise and flips in training."),
    Key("intensity_augmentation", "str", "standard", "With `augment`: `standard` (the scale, "
        "shift and noise above), or `cross-modality`, which adds random intensity mappings "
        "that make a sample look like another scanner's or modality's (GIN random "
        "convolutions, bias field, gamma contrast, histogram shift), for federations whose "
        "hospitals see one modality each.", choices=("standard", "cross-modality")),
    Key("shift", "list[float]", [0.0, 0.0, 0.0], "Largest random translation (mm per axis) "
        "of a training sample within its patch; keeps a network that sees whole spines from "
        "naming structures by where they sit in the patch.", length=3, minimum=0.0),
    Key("zoom", "float", 0.0, "Largest random rescaling of a training sample (0.15: "
        "0.85-1.15 times), for patients of other sizes.", minimum=0.0),
    Key("hd95", "bool", False, "Also report the 95th-percentile Hausdorff distance (mm; slower)."),
)


def network_keys(defaults: dict[str, object], names: tuple[str, ...]) -> tuple[Key, ...]:
    """The segmenter keys ``names`` with other ``defaults``, for tasks built on its network."""
    by_name = {key.name: key for key in SEGMENTER_KEYS}
    return tuple(replace(by_name[n], default=defaults.get(n, by_name[n].default)) for n in names)
