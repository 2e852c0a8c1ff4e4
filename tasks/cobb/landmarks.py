"""Vertebral body corners (AASCE landmarks) as quadrilaterals and as a training label map.

The training target is each body's quadrilateral shrunk towards its mid-line
(``HEIGHT_KEPT`` of its height, full width), so that the gap between two
neighbouring bodies stays several pixels wide even where the disc between them
is thin, and predicted bodies come apart as separate regions. Shrinking a
quadrilateral along its height keeps its endplate direction.
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as Polygon

from tasks.blocks.classes import ClassTable
from tasks.errors import UserError
from tasks.imageio import Volume
from tasks.labels import VERTEBRA_NAMES
from tasks.manifest import Manifest
from tasks.points import CORNERS, read_points

_ORDER = {name: value for value, name in VERTEBRA_NAMES.items()}
BODY = ClassTable(("background", "body"), (0, 1), ("background", "vertebra"),
                  np.r_[0, 1, np.zeros(254)].astype(np.int64))
HEIGHT_KEPT = 0.7


def body_quads(points: list[dict], source: str = "keypoints") -> list[np.ndarray]:
    """(4, 2) pixel corners (top-left, top-right, bottom-right, bottom-left) of each vertebra
    with all four corners, top of the spine first."""
    by_label: dict[str, dict[str, tuple[float, float]]] = {}
    for point in points:
        if point.get("corner") in CORNERS and "label" in point:
            by_label.setdefault(str(point["label"]), {})[point["corner"]] = (
                float(point["X"]), float(point["Y"]))
    unknown = [label for label in by_label if label not in _ORDER]
    if unknown:
        raise UserError(f"{source}: unknown vertebra label {unknown[0]!r}")
    order = ("top-left", "top-right", "bottom-right", "bottom-left")
    return [np.array([corners[c] for c in order])
            for label, corners in sorted(by_label.items(), key=lambda item: _ORDER[item[0]])
            if len(corners) == 4]


def shrink(quad: np.ndarray, kept: float = HEIGHT_KEPT) -> np.ndarray:
    """A (4, 2) quadrilateral (top-left, top-right, bottom-right, bottom-left) with each side's
    top and bottom corners moved towards their midpoint, keeping ``kept`` of its height."""
    top, bottom = quad[[0, 1]], quad[[3, 2]]
    middle = (top + bottom) / 2
    top, bottom = middle + kept * (top - middle), middle + kept * (bottom - middle)
    return np.array([top[0], top[1], bottom[1], bottom[0]])


def quad_label_map(quads: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Label map of a radiograph's bodies: 1 inside each shrunk quadrilateral, 0 elsewhere."""
    labels = np.zeros(shape, dtype=np.int16)
    grid = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1)
    centres = grid.reshape(-1, 2)
    for quad in quads:
        labels[Polygon(shrink(quad)).contains_points(centres).reshape(shape)] = 1
    return labels


def corner_target(manifest: Manifest, row: dict[str, str], image: Volume) -> Volume:
    """The training target of a radiograph row: its keypoint corners as a body label map."""
    path = manifest.path(row, "keypoints")
    quads = body_quads(read_points(path), str(path))
    if not quads:
        raise UserError(f"{path}: no vertebra with all four corners")
    return Volume(quad_label_map(quads, image.array.shape), image.affine)
