"""Where each disc level is, in world mm, from whatever the data carry.

In order of preference: a VerSe-style centroid list (a disc lies midway between
the centroids of its two vertebrae), a mask (the same, from each vertebra
label's centre), or RSNA keypoints (the mean of the series' points labelled with
the level: the spinal canal point on sagittal T2, the left and right foramina on
sagittal T1, whose mean is near the midline).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.blocks.crops import vertebra_positions
from tasks.imageio import Volume
from tasks.labels import SACRUM
from tasks.manifest import DISC_LEVELS, Manifest
from tasks.points import labelled_world, read_points, to_world

# Upper vertebra (VerSe value) of each disc level, T12/L1 (19) to L5/S1 (24).
UPPER = dict(zip(DISC_LEVELS, range(19, 25), strict=True))


def _lower(upper: int) -> int:
    return SACRUM if upper == 24 else upper + 1


def centres_between(vertebrae: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Disc level -> midpoint of the world centroids of the level's two vertebrae."""
    return {level: (vertebrae[upper] + vertebrae[_lower(upper)]) / 2
            for level, upper in UPPER.items() if upper in vertebrae and _lower(upper) in vertebrae}


def centres_from_centroids(points: list[dict[str, Any]], affine: np.ndarray
                           ) -> dict[str, np.ndarray]:
    """Disc centres from a centroid list in voxel coordinates of the image ``affine`` maps."""
    return centres_between(labelled_world(points, affine))


def disc_centres(manifest: Manifest, row: dict[str, str], image: Volume
                 ) -> dict[str, np.ndarray]:
    """Disc level -> world centre for a manifest row (centroids, else mask, else keypoints)."""
    vertebrae = vertebra_positions(manifest, row, image, (*UPPER.values(), SACRUM))
    if vertebrae is not None:
        return centres_between(vertebrae)
    if row.get("keypoints"):
        points = [p for p in read_points(manifest.path(row, "keypoints"))
                  if p.get("level") in UPPER]
        world = to_world(points, image.affine)
        levels = [p["level"] for p in points]
        return {level: world[[i for i, name in enumerate(levels) if name == level]].mean(axis=0)
                for level in dict.fromkeys(levels)}
    return {}
