"""Disc crops: the crop classifier's crops (``tasks/blocks/crops.py``) around each disc
centre, labelled (Pfirrmann grade - 1, canal stenosis severity).
"""

from __future__ import annotations

from typing import Any

from tasks.blocks.cache import PreparedCache
from tasks.blocks.crops import Crop, prepare_crops, row_grade, sagittal_crops
from tasks.grading.discs import disc_centres
from tasks.imageio import load_image
from tasks.manifest import Manifest

HEADS = 2  # Pfirrmann grade, canal stenosis


def row_discs(manifest: Manifest, row: dict[str, str], settings: dict[str, Any]) -> list[Crop]:
    """Every disc level of a row that has a position, with its crop and labels (Pfirrmann
    grade 0-4, i.e. grade - 1, and stenosis severity 0-2; -1 where the manifest has none)."""
    image = load_image(manifest.path(row))
    centres = disc_centres(manifest, row, image)
    return [Crop(level, crop, (row_grade(row, f"pfirrmann_{level}", first=1),
                               row_grade(row, f"spinal_canal_stenosis_{level}")), centres[level])
            for level, crop in sagittal_crops(image, row["modality"], centres, settings).items()]


def prepare_discs(manifest: Manifest, settings: dict[str, Any],
                  cache: PreparedCache | None = None) -> list[list[Crop]]:
    """The discs of every row (see ``prepare_crops``)."""
    return prepare_crops(manifest, settings, cache, row_discs, HEADS, "discs")
