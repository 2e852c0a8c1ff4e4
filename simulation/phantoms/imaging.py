"""Render a tissue map as CT (HU), MR (T1, T2) or a radiograph, then apply a scanner.

Intensities per tissue follow the physics loosely but in the right order:
CT in Hounsfield units (cortical bone ~1000, trabecular ~230, lower in
osteoporosis, disc ~90, CSF ~10, fat ~-100, air -1000); on T2 MR the disc
nucleus is bright when healthy and darkens with its degeneration grade, CSF is
bright; on T1 fat and marrow are bright. A radiograph is the line integral of
CT attenuation (a digitally reconstructed radiograph, log domain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from simulation.phantoms.anatomy import (
    Anatomy,
    Tissue,
)
from tasks.labels import CANAL, structure_of

T = Tissue
CT_HU = {T.AIR: -1000.0, T.FAT: -100.0, T.MUSCLE: 45.0, T.CORTICAL: 1050.0, T.TRABECULAR: 230.0,
         T.POSTERIOR: 650.0, T.ANNULUS: 95.0, T.NUCLEUS: 80.0, T.CSF: 10.0}
CT_HU_OSTEOPOROTIC = {T.CORTICAL: 750.0, T.TRABECULAR: 90.0, T.POSTERIOR: 450.0}
MR_SIGNAL = {
    "T1": {T.AIR: 0.0, T.FAT: 1.0, T.MUSCLE: 0.35, T.CORTICAL: 0.05, T.TRABECULAR: 0.7,
           T.POSTERIOR: 0.3, T.ANNULUS: 0.3, T.NUCLEUS: 0.4, T.CSF: 0.15},
    "T2": {T.AIR: 0.0, T.FAT: 0.8, T.MUSCLE: 0.25, T.CORTICAL: 0.05, T.TRABECULAR: 0.45,
           T.POSTERIOR: 0.25, T.ANNULUS: 0.2, T.NUCLEUS: 0.9, T.CSF: 1.0},
}
# T2 nucleus signal relative to a healthy disc, by degeneration grade.
NUCLEUS_T2_BY_GRADE = {1: 1.0, 2: 0.8, 3: 0.5, 4: 0.3, 5: 0.2}
WATER_ATTENUATION = 0.02  # 1/mm, about 60-70 keV


@dataclass(frozen=True)
class ScannerEffects:
    """How one scanner differs from another: all effects a virtual hospital can vary.

    ``scale``/``offset`` map ideal intensities to stored values, ``noise`` is
    the noise standard deviation in ideal units (HU for CT), ``bias`` the
    strength of a smooth multiplicative field (MR), ``blur`` the point-spread
    width in voxels.
    """

    scale: float = 1.0
    offset: float = 0.0
    noise: float = 0.0
    bias: float = 0.0
    blur: float = 0.5


def _lookup(tissue: np.ndarray, table: dict[int, float]) -> np.ndarray:
    values = np.zeros(max(table) + 1, dtype=np.float32)
    for code, value in table.items():
        values[code] = value
    return values[tissue]


def _texture(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def ct_hu(tissue: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Ideal (noise-free, unblurred) CT in HU, with trabecular texture."""
    table = dict(CT_HU)
    if anatomy.osteoporosis:
        table.update(CT_HU_OSTEOPOROTIC)
    hu = _lookup(tissue, table)
    bone = tissue == Tissue.TRABECULAR
    hu[bone] += 35.0 * _texture(tissue.shape, rng, 1.0)[bone]
    return hu


def mr_signal(tissue: np.ndarray, labels: np.ndarray, anatomy: Anatomy, sequence: str,
              rng: np.random.Generator) -> np.ndarray:
    """Ideal MR signal (0-1) for a sequence; the T2 nucleus darkens with its disc's grade."""
    table = dict(MR_SIGNAL[sequence])
    if anatomy.osteoporosis:
        table[Tissue.TRABECULAR] = min(1.0, table[Tissue.TRABECULAR] * 1.25)  # fattier marrow
    signal = _lookup(tissue, table)
    if sequence == "T2":
        for disc in anatomy.discs:
            nucleus = (labels == disc.label) & (tissue == Tissue.NUCLEUS)
            healthy, annulus = table[Tissue.NUCLEUS], table[Tissue.ANNULUS]
            signal[nucleus] = annulus + (healthy - annulus) * NUCLEUS_T2_BY_GRADE[disc.grade]
    marrow = tissue == Tissue.TRABECULAR
    signal[marrow] *= 1.0 + 0.08 * _texture(tissue.shape, rng, 1.0)[marrow]
    return signal


def acquire(ideal: np.ndarray, effects: ScannerEffects, rng: np.random.Generator,
            rician: bool = False) -> np.ndarray:
    """Apply a scanner: blur, bias field, intensity scale/offset, then noise."""
    image = ndimage.gaussian_filter(ideal, effects.blur) if effects.blur > 0 else ideal.copy()
    if effects.bias > 0:
        image *= bias_field(image.shape, effects.bias, rng)
    if rician:
        noise = effects.noise
        real = image + rng.normal(0.0, noise, image.shape)
        imaginary = rng.normal(0.0, noise, image.shape)
        image = np.sqrt(real**2 + imaginary**2)
    else:
        image = image + rng.normal(0.0, effects.noise, image.shape)
    return (image * effects.scale + effects.offset).astype(np.float32)


def bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(strength * p), p a random quadratic with unit spread."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    terms = [*axes, *(a * b for i, a in enumerate(axes) for b in axes[i:])]
    poly = sum(rng.normal() * t for t in terms)
    poly = (poly - poly.mean()) / (poly.std() + 1e-6)
    return np.exp(strength * poly).astype(np.float32)


def project(hu: np.ndarray, labels: np.ndarray, axis: int, step: float,
            min_path: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A radiograph along ``axis`` and its label map.

    The image is the attenuation line integral through the CT (log domain,
    bone bright). Each detector pixel is labelled with the vertebra or disc
    that the ray crosses for the longest path (at least ``min_path`` mm);
    the canal is not visible on radiographs and is not labelled.
    """
    mu = np.clip(WATER_ATTENUATION * (1.0 + hu / 1000.0), 0.0, None)
    image = mu.sum(axis=axis) * step
    values = [v for v in np.unique(labels) if v and v != CANAL and structure_of(int(v))]
    best = np.zeros(image.shape, dtype=np.float32)
    label_map = np.zeros(image.shape, dtype=np.int16)
    for value in values:
        path = (labels == value).sum(axis=axis) * step
        wins = (path > best) & (path >= min_path)
        label_map[wins] = value
        best = np.maximum(best, path)
    return image.astype(np.float32), label_map
