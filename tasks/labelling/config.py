"""Settings of the labelling task (the ``[task]`` section of a run config)."""

from __future__ import annotations

from tasks.blocks.settings import network_keys
from tasks.config import Key

KEYS = (
    Key("modalities", "list[str]", ["CT", "MR"], "Manifest modalities this model trains on "
        "and accepts.", choices=("CT", "MR")),
    *network_keys({"channels": [8, 16, 32, 64, 128], "spacing": [4.0, 4.0, 4.0],
                   "patch_size": [32, 32, 80], "shift": [8.0, 8.0, 48.0], "zoom": 0.15},
                  ("channels", "res_units", "norm_affine", "spacing", "ct_window", "patch_size",
                   "augment", "intensity_augmentation", "shift", "zoom")),
    Key("min_volume", "float", 1000.0, "Smallest predicted vertebra (mm^3) that becomes a "
        "centroid; smaller islands of foreground are noise.", minimum=0.0),
    Key("radius", "float", 20.0, "Identification radius in mm (VerSe: 20).", above=0.0),
)
