"""Vertebra crops: the crop classifier's crops (``tasks/blocks/crops.py``) around each
vertebra centroid T12-L5, labelled with the vertebra's Genant grade (the manifest's
``fracture_<level>``; -1 where it has none).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from rich.progress import track

from tasks.blocks.cache import PreparedCache, cached
from tasks.blocks.crops import Crop, crop_arrays, crops_of_arrays, sagittal_crops
from tasks.imageio import Volume, load_image
from tasks.manifest import VERTEBRAE, Manifest
from tasks.points import label_centroids, read_points, to_world

# VerSe value of each graded vertebra: T12 (19) to L5 (24).
LEVELS = dict(zip(range(19, 25), VERTEBRAE, strict=True))


def centres_from_centroids(points: list[dict[str, Any]], affine: np.ndarray
                           ) -> dict[str, np.ndarray]:
    """Vertebra name (t12 ... l5) -> world centre, from a centroid list in voxel coordinates
    of the image ``affine`` maps."""
    labelled = [p for p in points if int(p.get("label", 0)) in LEVELS]
    world = to_world(labelled, affine)
    return {LEVELS[int(p["label"])]: world[i] for i, p in enumerate(labelled)}


def vertebra_centres(manifest: Manifest, row: dict[str, str], image: Volume
                     ) -> dict[str, np.ndarray]:
    """Vertebra name -> world centre for a manifest row: its centroid list, else its mask."""
    if row.get("centroids"):
        return centres_from_centroids(read_points(manifest.path(row, "centroids")),
                                      image.affine)
    if row.get("mask"):
        mask = load_image(manifest.path(row, "mask"))
        found = label_centroids(mask.array, mask.affine, tuple(LEVELS))
        return {LEVELS[value]: centre for value, centre in found.items()}
    return {}


def _grade(row: dict[str, str], level: str) -> int:
    value = row.get(f"fracture_{level}", "")
    return int(float(value)) if value != "" else -1


def row_vertebrae(manifest: Manifest, row: dict[str, str], settings: dict[str, Any]
                  ) -> list[Crop]:
    """Every vertebra T12-L5 of a row that has a position, with its crop and Genant grade."""
    image = load_image(manifest.path(row))
    centres = vertebra_centres(manifest, row, image)
    return [Crop(level, crop, (_grade(row, level),), centres[level])
            for level, crop in sagittal_crops(image, row["modality"], centres, settings).items()]


def prepare_vertebrae(manifest: Manifest, settings: dict[str, Any],
                      cache: PreparedCache | None = None) -> list[list[Crop]]:
    """The vertebrae of every row (loaded once, kept in memory; read from ``cache`` where it
    holds the row, stored there otherwise)."""
    recipe = {"prepare": "vertebra-crops", **{k: settings[k] for k in ("pixel", "crop", "slab",
                                                                         "ct_window")}}
    return [cached(cache, manifest, row, recipe,
                   functools.partial(row_vertebrae, manifest, row, settings),
                   functools.partial(crop_arrays, heads=1), crops_of_arrays)
            for row in track(manifest.rows(), description="Cropping vertebrae",
                             transient=True)]
