"""Turn an ``Anatomy`` into voxel maps: spine labels and tissue classes on a grid.

Shapes are evaluated at voxel centres, so labels are exact at those points;
imaging adds the scanner's point-spread function afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulation.phantoms.anatomy import (
    SACRUM,
    Anatomy,
    Disc,
    Pose,
    Tissue,
    Vertebra,
)
from tasks.labels import CANAL


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS voxel grid: shape (X, Y, Z), spacing and origin in mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world (RAS, mm) affine."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def block(self, center: np.ndarray, radius: float) -> tuple[tuple[slice, ...], np.ndarray]:
        """Index slices of the sub-block around a sphere, and its points' world coordinates."""
        spacing, origin = np.array(self.spacing), np.array(self.origin)
        low = np.floor((center - radius - origin) / spacing).astype(int)
        high = np.ceil((center + radius - origin) / spacing).astype(int) + 1
        low = np.clip(low, 0, self.shape)
        high = np.clip(high, 0, self.shape)
        index = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        axes = [origin[i] + spacing[i] * np.arange(low[i], high[i]) for i in range(3)]
        points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        return index, points


def grid_around(anatomy: Anatomy, spacing: tuple[float, float, float], fov: float,
                offset: tuple[float, float] = (0.0, 0.0)) -> Grid:
    """A grid covering the spine: ``fov`` mm in-plane, from above the top vertebra to the sacrum."""
    top, sacrum = anatomy.vertebrae[0], anatomy.vertebrae[-1]
    z_high = anatomy.poses[0].center[2] + top.height / 2 + 10.0
    z_low = anatomy.poses[-1].center[2] - sacrum.height / 2 - 20.0
    low = np.array([-fov / 2 + offset[0], -0.6 * fov + offset[1], z_low])
    extent = np.array([fov, fov, z_high - z_low])
    shape = tuple(int(n) for n in np.ceil(extent / np.array(spacing)).astype(int))
    return Grid(shape, tuple(spacing), tuple(low))


def rasterize(anatomy: Anatomy, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Label map (int16, spinefl convention) and tissue map (uint8 tissue codes) on ``grid``."""
    labels = np.zeros(grid.shape, dtype=np.int16)
    tissue = np.full(grid.shape, Tissue.AIR, dtype=np.uint8)
    _paint_body(anatomy, grid, tissue)
    for vertebra, pose in zip(anatomy.vertebrae, anatomy.poses, strict=True):
        index, points = grid.block(pose.center, 40.0 * anatomy.scale + vertebra.height)
        inside = _canal(anatomy, vertebra, _local(points, pose))
        labels[index][inside] = CANAL
        tissue[index][inside] = Tissue.CSF
    neighbours = zip(anatomy.discs, anatomy.poses[:-1], anatomy.poses[1:], strict=True)
    for disc, upper, lower in neighbours:
        _paint_disc(anatomy, disc, upper, lower, grid, labels, tissue)
    for vertebra, pose in zip(anatomy.vertebrae, anatomy.poses, strict=True):
        index, points = grid.block(pose.center, 60.0 * anatomy.scale + vertebra.height)
        posterior, body, cortical = _vertebra(anatomy, vertebra, _local(points, pose))
        labels[index][posterior | body] = vertebra.label
        tissue[index][posterior] = Tissue.POSTERIOR
        tissue[index][body] = Tissue.TRABECULAR
        tissue[index][body & cortical] = Tissue.CORTICAL
    return labels, tissue


def _local(points: np.ndarray, pose: Pose) -> np.ndarray:
    """World points (..., 3) in a pose's frame (u_x lateral, u_y anterior, u_z superior)."""
    return (points - pose.center) @ pose.frame


def _paint_body(anatomy: Anatomy, grid: Grid, tissue: np.ndarray) -> None:
    rx, ry, fat = anatomy.body
    cy = ry - 80.0 * anatomy.scale
    x = grid.origin[0] + grid.spacing[0] * np.arange(grid.shape[0])
    y = grid.origin[1] + grid.spacing[1] * np.arange(grid.shape[1])
    radius = np.sqrt((x[:, None] / rx) ** 2 + ((y[None, :] - cy) / ry) ** 2)
    plane = np.where(radius <= 1.0, Tissue.MUSCLE, Tissue.AIR)
    plane = np.where((radius <= 1.0) & (radius > 1.0 - fat / min(rx, ry)), Tissue.FAT, plane)
    tissue[...] = plane[:, :, None].astype(np.uint8)


def _canal_geometry(anatomy: Anatomy, vertebra: Vertebra) -> tuple[float, float, float]:
    rcx, rcy = anatomy.canal
    return rcx, rcy, -(vertebra.b + rcy)


def _canal(anatomy: Anatomy, vertebra: Vertebra, u: np.ndarray) -> np.ndarray:
    rcx, rcy, y_c = _canal_geometry(anatomy, vertebra)
    ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
    reach = vertebra.height / 2 + 7.0 * anatomy.scale
    low = -reach if vertebra.label != SACRUM else -vertebra.height / 2 - 10.0 * anatomy.scale
    return ((ux / rcx) ** 2 + ((uy - y_c) / rcy) ** 2 < 1.0) & (uz <= reach) & (uz >= low)


def _vertebra(anatomy: Anatomy, v: Vertebra, u: np.ndarray):
    """Masks (posterior elements, body, cortical shell) of one vertebra in local coordinates."""
    s = anatomy.scale
    ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
    h = v.height
    a, b = v.a, v.b
    rho = np.sqrt((ux / a) ** 2 + (uy / b) ** 2)
    body = (rho <= 1.0) & (np.abs(uz) <= h / 2)
    if v.label == SACRUM:
        # Lower sacrum: a segment tapering down and curving back below S1.
        t = np.clip((-h / 2 - uz) / (40.0 * s), 0.0, 1.0)
        ta, tb = a * (1.0 - 0.5 * t), b * (1.0 - 0.4 * t)
        rho_low = np.sqrt((ux / ta) ** 2 + ((uy + 8.0 * s * t) / tb) ** 2)
        lower = (rho_low <= 1.0) & (uz < -h / 2) & (uz >= -h / 2 - 40.0 * s)
        alae = ((np.abs(ux) >= 0.8 * a) & (np.abs(ux) <= a + 25.0 * s)
                & (uy >= -b) & (uy <= 0.5 * b) & (uz >= -0.4 * h) & (uz <= 0.45 * h))
        body = body | lower | alae
        rho = np.minimum(rho, rho_low)
    cortex = (1.0 if anatomy.osteoporosis else 1.6) * s
    depth = np.minimum(h / 2 - np.abs(uz), (1.0 - rho) * min(a, b))
    cortical = depth < cortex

    rcx, rcy, y_c = _canal_geometry(anatomy, v)
    wall = 5.0 * s
    rc = np.sqrt((ux / rcx) ** 2 + ((uy - y_c) / rcy) ** 2)
    rc_outer = np.sqrt((ux / (rcx + wall)) ** 2 + ((uy - y_c) / (rcy + wall)) ** 2)
    arch = (rc >= 1.0) & (rc_outer <= 1.0) & (uy < -0.7 * b) & (np.abs(uz - 0.1 * h) <= 0.32 * h)
    back = y_c - rcy
    spine_z = 0.05 * h + 0.35 * (uy - back)
    spinous = ((np.abs(ux) <= 3.0 * s) & (uy <= back) & (uy >= back - 28.0 * s)
               & (np.abs(uz - spine_z) <= 0.22 * h))
    transverse = ((np.abs(ux) >= rcx + wall - 1.0) & (np.abs(ux) <= rcx + wall + 22.0 * s)
                  & (np.abs(uy - y_c) <= 4.0 * s) & (np.abs(uz - 0.15 * h) <= 5.0 * s))
    if v.label == SACRUM:
        transverse = np.zeros_like(transverse)
    posterior = (arch | spinous | transverse) & ~body
    return posterior, body, cortical


def _paint_disc(anatomy: Anatomy, disc: Disc, upper: Pose, lower: Pose, grid: Grid,
                labels: np.ndarray, tissue: np.ndarray) -> None:
    vs = {v.label: v for v in anatomy.vertebrae}
    vu, vl = vs[disc.upper], vs[disc.lower]
    top = upper.center - upper.frame[:, 2] * vu.height / 2
    bottom = lower.center + lower.frame[:, 2] * vl.height / 2
    middle = (top + bottom) / 2
    e_z = upper.frame[:, 2] + lower.frame[:, 2]
    e_z /= np.linalg.norm(e_z)
    e_y = np.array([0.0, 1.0, 0.0]) - e_z[1] * e_z
    e_y /= np.linalg.norm(e_y)
    frame = np.stack([np.cross(e_y, e_z), e_y, e_z], axis=1)
    a, b = (vu.a + vl.a) / 2 * 1.02, (vu.b + vl.b) / 2 * 1.02
    index, points = grid.block(middle, max(a, b) + disc.herniation + disc.height)
    below_top = (points - top) @ upper.frame[:, 2]
    above_bottom = (points - bottom) @ lower.frame[:, 2]
    u = _local(points, Pose(middle, frame))
    ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
    between = (below_top <= 0.0) & (above_bottom >= 0.0) & (np.abs(uz) <= disc.height)
    rho = np.sqrt((ux / a) ** 2 + (uy / b) ** 2)
    inside = between & (rho <= 1.0)
    margin = np.minimum(-below_top, above_bottom)
    nucleus = inside & (np.sqrt((ux / a) ** 2 + ((uy + 0.1 * b) / b) ** 2) <= 0.55) & (
        margin >= 0.2 * disc.height)
    labels[index][inside] = disc.label
    tissue[index][inside] = Tissue.ANNULUS
    tissue[index][nucleus] = Tissue.NUCLEUS
    if disc.herniation > 0:
        s = anatomy.scale
        bulge = ((ux / (7.0 * s)) ** 2 + ((uy + b) / (disc.herniation + 1.0)) ** 2
                 + (uz / max(0.45 * disc.height, 2.0)) ** 2 <= 1.0) & ~inside
        labels[index][bulge] = disc.label
        tissue[index][bulge] = Tissue.NUCLEUS
