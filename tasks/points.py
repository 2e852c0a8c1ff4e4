"""Labelled points: VerSe-style centroid and keypoint files, and the centres of labelled
regions of a label map.

A file is a JSON list whose first entry is ``{"direction": [axis codes]}``
and whose other entries carry voxel coordinates ``X``, ``Y`` (and ``Z`` for
3D images) of the image they belong to, plus labels (``label`` for a
vertebra's VerSe value; ``level``, ``condition`` or ``corner`` for keypoints).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from tasks.errors import UserError
from tasks.files import write_text

AXES = ("X", "Y", "Z")
AXIS_CODES = ("R", "L", "A", "P", "S", "I")
# Vertebral body corners on an AP radiograph, in AASCE's order.
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def write_points(points: list[dict[str, Any]], affine: np.ndarray, path: Path) -> None:
    """Write labelled points (voxel coordinates of the image ``affine`` belongs to), with the
    image's axis codes first, as VerSe does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codes = list(nib.aff2axcodes(affine))
    write_text(path, json.dumps([{"direction": codes}, *points], indent=1))


def read_points(path: Path) -> list[dict[str, Any]]:
    """The point entries of a centroid or keypoint file (the direction entry dropped)."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable point file ({e})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: a point file is a JSON list of objects")
    points = [e for e in entries if "direction" not in e]
    for number, point in enumerate(points, start=1):
        if not {"X", "Y"} <= set(point):
            raise UserError(f"{path}: point {number} has no X and Y coordinates")
    return points


def centroids_text(path: Path) -> str:
    """A centroid file rebuilt from what spinefl reads of it: the direction (three axis
    codes) and, per point, numeric ``X``, ``Y`` (``Z``) and an integer ``label``. Nothing
    else of the file survives (a name, a note, text in place of a number): UserError
    naming the point or entry that is not so."""
    points = read_points(path)
    entries: list[dict[str, Any]] = []
    for entry in json.loads(Path(path).read_text()):
        if "direction" in entry:
            codes = entry["direction"]
            if (not isinstance(codes, list) or len(codes) != 3
                    or not all(isinstance(c, str) and c in AXIS_CODES for c in codes)):
                raise UserError(f"{path}: direction must be three axis codes of R, L, A, P, "
                                "S, I")
            entries.append({"direction": list(codes)})
            break
    for number, point in enumerate(points, start=1):
        kept = {k: point[k] for k in (*AXES, "label") if k in point}
        if not all(isinstance(v, int | float) and not isinstance(v, bool)
                   and math.isfinite(v) for v in kept.values()) or \
                not isinstance(kept.get("label"), int):
            raise UserError(f"{path}: point {number} needs numeric X, Y (Z) and an integer "
                            "label")
        entries.append(kept)
    return json.dumps(entries, indent=1)


def to_world(points: list[dict[str, Any]], affine: np.ndarray) -> np.ndarray:
    """(N, 3) world coordinates in mm of points given in voxel coordinates of an image.

    A radiograph's points have X and Y only; its affine maps (X, Y, 0)."""
    voxels = np.array([[float(p.get(a, 0.0)) for a in AXES] + [1.0] for p in points])
    return (affine @ voxels.T).T[:, :3] if len(points) else np.zeros((0, 3))


def labelled_world(points: list[dict[str, Any]], affine: np.ndarray) -> dict[int, np.ndarray]:
    """Label -> world position (mm) of the labelled entries of a centroid list in voxel
    coordinates of the image ``affine`` maps (a VerSe list's direction entry has none)."""
    labelled = [p for p in points if "label" in p]
    return dict(zip((int(p["label"]) for p in labelled), to_world(labelled, affine),
                    strict=True))


def to_voxels(world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 3) voxel coordinates of (N, 3) world points (the inverse of ``to_world``)."""
    homogeneous = np.c_[world, np.ones(len(world))]
    return (np.linalg.inv(affine) @ homogeneous.T).T[:, :3]


def largest_parts(labels: np.ndarray, affine: np.ndarray, values: tuple[int, ...],
                  min_voxels: float = 0.0) -> list[tuple[int, np.ndarray, int]]:
    """(value, world centre of mass, voxels) of the largest connected part of each label value
    in ``values``; values absent or smaller than ``min_voxels`` are left out."""
    found = []
    for value in values:
        parts, count = ndimage.label(labels == value)
        if count == 0:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if sizes[largest - 1] < max(min_voxels, 1):
            continue
        index = np.array(ndimage.center_of_mass(parts == largest))
        point = np.r_[index, np.zeros(3 - len(index)), 1.0]
        found.append((value, (affine @ point)[:3], int(sizes[largest - 1])))
    return found


def label_centroids(labels: np.ndarray, affine: np.ndarray, values: tuple[int, ...],
                    min_voxels: float = 0.0) -> dict[int, np.ndarray]:
    """Value -> world centre of its largest part (see ``largest_parts``)."""
    return {value: centre for value, centre, _ in largest_parts(labels, affine, values,
                                                                min_voxels)}
