"""Settings of the Cobb angle task (the ``[task]`` section of a run config)."""

from __future__ import annotations

from tasks.blocks.settings import network_keys
from tasks.config import Key

KEYS = (
    *network_keys({"channels": [16, 32, 64, 128], "spacing": [1.5, 1.5, 1.5],
                   "patch_size": [96, 192, 16]},
                  ("channels", "res_units", "norm_affine", "spacing", "patch_size", "augment",
                   "intensity_augmentation", "shift", "zoom")),
    Key("min_area", "float", 0.4, "A predicted vertebral body smaller than this fraction of "
        "the median body on the image is noise and is left out.", minimum=0.0),
    Key("tolerance", "float", 5.0, "Cobb error (degrees) within which a radiograph counts as "
        "measured well (`cobb_within`, the score); 5 degrees is the usual inter-observer "
        "variability.", minimum=0.0),
)
