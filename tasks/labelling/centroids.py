"""Vertebra centroids: from a label map (predicted or ground truth) and as VerSe-style lists."""

from __future__ import annotations

import itertools
from typing import Any

import nibabel as nib
import numpy as np

from tasks.points import to_voxels, to_world
from tasks.segmentation.classes import NAMED_VERTEBRAE

Centroids = dict[int, np.ndarray]  # VerSe label -> world position in mm


def consecutive_labels(found: list[tuple[int, np.ndarray, int]],
                       order: tuple[int, ...] = NAMED_VERTEBRAE) -> Centroids:
    """Name detections (value, world centre, voxels) as one run of consecutive vertebrae that
    agrees with the network most.

    Detections are ordered head to feet (world z); parts closer than half the median
    step are one vertebra (the larger part names it); a step of about k median steps
    skips k - 1 vertebrae. The run's offset is the one under which the most voxels
    carry their predicted label, so one mislabelled level cannot shift the others
    (vertebrae are consecutive: the anatomical prior)."""
    ranked = sorted(found, key=lambda item: -item[1][2])
    merged: list[tuple[int, np.ndarray, int]] = []
    steps = [float(np.linalg.norm(a[1] - b[1])) for a, b in itertools.pairwise(ranked)]
    step = float(np.median([s for s in steps if s > 0])) if steps else 0.0
    for item in ranked:
        if merged and np.linalg.norm(item[1] - merged[-1][1]) < step / 2:
            keep, other = (merged[-1], item) if merged[-1][2] >= item[2] else (item, merged[-1])
            centre = (keep[1] * keep[2] + other[1] * other[2]) / (keep[2] + other[2])
            merged[-1] = (keep[0], centre, keep[2] + other[2])
        else:
            merged.append(item)
    if not merged:
        return {}
    gaps = [np.linalg.norm(b[1] - a[1]) for a, b in itertools.pairwise(merged)]
    step = float(np.median(gaps)) if gaps else 1.0
    ranks = np.cumsum([0] + [max(1, round(g / step)) for g in gaps])
    position = {value: i for i, value in enumerate(order)}
    votes = {}
    for offset in range(-int(ranks[-1]), len(order)):
        votes[offset] = sum(size for (value, _, size), rank in zip(merged, ranks, strict=True)
                            if position.get(value) == rank + offset)
    best = max(votes, key=lambda k: votes[k])
    return {order[rank + best]: centre for (_, centre, _), rank in zip(merged, ranks, strict=True)
            if 0 <= rank + best < len(order)}


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
