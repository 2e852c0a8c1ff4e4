"""Endplate tilt of each vertebral body and the Cobb angle they make.

A body's endplates run along its long axis (lumbar and thoracic bodies are
wider than tall on an AP view), so a body's tilt is the direction of the
principal axis of its region's second moments; for a rectangle this is
exactly the endplate direction. The Cobb angle is the largest angle between
any two vertebrae's endplates, as the AASCE challenge measures the main curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Body:
    """One vertebral body on a radiograph, in mm of its image plane: centre, tilt (degrees,
    counter-clockwise from the first image axis, in (-90, 90]), and its four corners
    (top-left, top-right, bottom-right, bottom-left in the principal frame)."""

    centre: np.ndarray
    tilt: float
    corners: np.ndarray


def _fold(angle: float) -> float:
    """An axis direction in degrees folded into (-90, 90]."""
    folded = (angle + 90.0) % 180.0 - 90.0
    return 90.0 if folded == -90.0 else folded


def body_of(points: np.ndarray) -> Body:
    """The body whose region is the (N, 2) points (mm): centre, principal-axis tilt, corners."""
    centre = points.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((points - centre).T))
    major, minor = vectors[:, np.argmax(values)], vectors[:, np.argmin(values)]
    along, across = (points - centre) @ major, (points - centre) @ minor
    corners = np.array([centre + a * major + c * minor for c, a in (
        (across.min(), along.min()), (across.min(), along.max()),
        (across.max(), along.max()), (across.max(), along.min()))])
    return Body(centre, _fold(float(np.degrees(np.arctan2(major[1], major[0])))), corners)


MERGED = 1.8  # a region this many times the median body is two bodies grown together


def bodies(foreground: np.ndarray, spacing: tuple[float, float], min_share: float
           ) -> list[Body]:
    """Bodies of a body mask (each connected region one body) with pixel ``spacing`` in mm,
    ordered along the second image axis. Left out: regions under ``min_share`` of the median
    region (noise), over ``MERGED`` times it, or whose long axis is nearer the spine's axis
    than across it (two bodies grown together; a body is wider than tall)."""
    parts, count = ndimage.label(foreground)
    regions = [np.argwhere(parts == k) * np.asarray(spacing) for k in range(1, count + 1)]
    regions = [r for r in regions if len(r) >= 3]
    if not regions:
        return []
    median = float(np.median([len(r) for r in regions]))
    found = [body_of(r) for r in regions if min_share * median <= len(r) <= MERGED * median]
    return sorted((b for b in found if abs(b.tilt) < 45.0), key=lambda body: body.centre[1])


def angle_between(a: float, b: float) -> float:
    """Angle in degrees between two line directions (0-90)."""
    difference = abs(a - b) % 180.0
    return min(difference, 180.0 - difference)


def cobb_angle(tilts: list[float]) -> float:
    """The largest angle between any two endplate directions (0 with fewer than two)."""
    return max((angle_between(a, b) for i, a in enumerate(tilts) for b in tilts[i + 1:]),
               default=0.0)
