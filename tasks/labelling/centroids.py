"""Vertebra centroids: from a label map (predicted or ground truth) and as VerSe-style lists."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from tasks.blocks.classes import NAMED_VERTEBRAE
from tasks.points import to_voxels, to_world

Centroids = dict[int, np.ndarray]  # VerSe label -> world position in mm


def read_centroids(points: list[dict[str, Any]], affine: np.ndarray) -> Centroids:
    """World positions of the named vertebrae of a VerSe-style centroid list (others ignored)."""
    named = [p for p in points if int(p.get("label", 0)) in NAMED_VERTEBRAE]
    world = to_world(named, affine)
    return {int(p["label"]): world[i] for i, p in enumerate(named)}


def centroid_list(centroids: Centroids, affine: np.ndarray) -> list[dict[str, Any]]:
    """A VerSe-style centroid list (direction entry first) in voxel coordinates of ``affine``'s
    image, top of the spine first."""
    labels = sorted(centroids)
    voxels = to_voxels(np.array([centroids[v] for v in labels]).reshape(-1, 3), affine)
    entries: list[dict[str, Any]] = [{"direction": list(nib.aff2axcodes(affine))}]
    for label, (x, y, z) in zip(labels, voxels, strict=True):
        entries.append({"label": label, "X": round(float(x), 2), "Y": round(float(y), 2),
                        "Z": round(float(z), 2)})
    return entries
