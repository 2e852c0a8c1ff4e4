"""Vertebra crops: the crop classifier's crops (``tasks/blocks/crops.py``) around each
vertebra centroid T12-L5, labelled with the vertebra's Genant grade (the manifest's
``fracture_<level>``; -1 where it has none).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.blocks.cache import PreparedCache
from tasks.blocks.crops import (
    Crop,
    prepare_crops,
    row_grade,
    sagittal_crops,
    vertebra_positions,
)
from tasks.imageio import Volume, load_image
from tasks.manifest import VERTEBRAE, Manifest
from tasks.points import labelled_world

# VerSe value of each graded vertebra: T12 (19) to L5 (24).
LEVELS = dict(zip(range(19, 25), VERTEBRAE, strict=True))


def centres_from_centroids(points: list[dict[str, Any]], affine: np.ndarray
                           ) -> dict[str, np.ndarray]:
    """Vertebra name (t12 ... l5) -> world centre, from a centroid list in voxel coordinates
    of the image ``affine`` maps."""
    return {LEVELS[label]: centre for label, centre in labelled_world(points, affine).items()
            if label in LEVELS}


def vertebra_centres(manifest: Manifest, row: dict[str, str], image: Volume
                     ) -> dict[str, np.ndarray]:
    """Vertebra name -> world centre for a manifest row: its centroid list, else its mask."""
    found = vertebra_positions(manifest, row, image, tuple(LEVELS)) or {}
    return {LEVELS[label]: centre for label, centre in found.items()}


def row_vertebrae(manifest: Manifest, row: dict[str, str], settings: dict[str, Any]
                  ) -> list[Crop]:
    """Every vertebra T12-L5 of a row that has a position, with its crop and Genant grade."""
    image = load_image(manifest.path(row))
    centres = vertebra_centres(manifest, row, image)
    return [Crop(level, crop, (row_grade(row, f"fracture_{level}"),), centres[level])
            for level, crop in sagittal_crops(image, row["modality"], centres, settings).items()]


def prepare_vertebrae(manifest: Manifest, settings: dict[str, Any],
                      cache: PreparedCache | None = None) -> list[list[Crop]]:
    """The vertebrae of every row (see ``prepare_crops``)."""
    return prepare_crops(manifest, settings, cache, row_vertebrae, 1, "vertebrae")
