"""Preprocessing (orientation, resampling, intensity) and training augmentation, with MONAI.

``prepare`` turns an image (and its mask) into the network's space: 3D images
in canonical RAS orientation, resampled to the task's spacing, with CT
windowed to [0, 1] and MR/XR scaled by robust percentiles. ``restore`` maps
per-class scores from that space back onto the input's exact grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.data import get_track_meta, set_track_meta

from tasks.blocks.intensity import cross_modality
from tasks.imageio import ImageError, Volume


@dataclass
class Prepared:
    """An image in network space.

    ``image``: (1, X, Y, Z) for 3D or (1, U, V) for radiographs, float32;
    ``classes``: same spatial shape, int64 class indices (None without a mask);
    ``orientation``: the input's axis orientation (nibabel ornt); ``shape``: the
    network-space grid's size before resampling, i.e. the input's in RAS order;
    ``affine``: network-space index (x, y, z, 1) -> world mm, as the input's affine
    (for a radiograph, index (u, v, 0, 1)).
    """

    image: torch.Tensor
    classes: torch.Tensor | None
    orientation: np.ndarray
    shape: tuple[int, ...]
    affine: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """Its fields as arrays (what ``tasks.blocks.cache`` stores)."""
        arrays = {"image": self.image.numpy(), "orientation": self.orientation,
                  "shape": np.asarray(self.shape), "affine": self.affine}
        if self.classes is not None:
            arrays["classes"] = self.classes.numpy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Prepared:
        classes = arrays.get("classes")
        return cls(torch.from_numpy(arrays["image"]),
                   None if classes is None else torch.from_numpy(classes),
                   arrays["orientation"], tuple(int(n) for n in arrays["shape"]),
                   arrays["affine"])


def intensity_arguments(modality: str, ct_window: list[float]) -> tuple[str, dict[str, Any]]:
    """The MONAI intensity transform for a modality, by class name and arguments: CT: the HU
    window to [0, 1]; MR and XR: 0.5-99.5th percentiles to [0, 1] (scale-robust)."""
    if modality == "CT":
        return "ScaleIntensityRange", {"a_min": ct_window[0], "a_max": ct_window[1],
                                       "b_min": 0.0, "b_max": 1.0, "clip": True}
    return "ScaleIntensityRangePercentiles", {"lower": 0.5, "upper": 99.5, "b_min": 0.0,
                                              "b_max": 1.0, "clip": True}


def intensity_transform(modality: str, ct_window: list[float]) -> mt.Transform:
    """The intensity transform of ``intensity_arguments``."""
    name, arguments = intensity_arguments(modality, ct_window)
    return getattr(mt, name)(**arguments)


RAS = nib.orientations.axcodes2ornt("RAS")


def _canonical(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Array in RAS axis order (3D; radiographs unchanged) and the input's own orientation."""
    if volume.is_projection:
        return volume.array, np.array([[0, 1], [1, 1]], dtype=float)
    current = nib.orientations.io_orientation(volume.affine)
    transform = nib.orientations.ornt_transform(current, RAS)
    return nib.orientations.apply_orientation(volume.array, transform), current


def target_shape(shape: tuple[int, ...], spacing: tuple[float, ...],
                 target: list[float]) -> tuple[int, ...]:
    """Grid size after resampling from ``spacing`` to ``target`` spacing."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=False))


def _canonical_spacing(volume: Volume, orientation: np.ndarray) -> tuple[float, ...]:
    spacing = volume.spacing
    return tuple(spacing[int(axis)] for axis in np.argsort(orientation[:, 0]))


def _network_affine(volume: Volume, orientation: np.ndarray, canonical_shape: tuple[int, ...],
                    size: tuple[int, ...]) -> np.ndarray:
    """Index -> world affine of the resampled canonical grid (pixel centres kept aligned, as
    linear resizing with align_corners=False does)."""
    canonical = volume.affine
    if not volume.is_projection:
        transform = nib.orientations.ornt_transform(orientation, RAS)
        canonical = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape)
    scale = np.eye(4)
    for axis, (before, after) in enumerate(zip(canonical_shape, size, strict=True)):
        scale[axis, axis] = before / after
        scale[axis, 3] = 0.5 * before / after - 0.5
    return canonical @ scale


def prepare(volume: Volume, modality: str, settings: dict[str, Any],
            mask: Volume | None = None, classes_of=None) -> Prepared:
    """Image (and mask, as class indices via ``classes_of``) in network space."""
    array, orientation = _canonical(volume)
    spacing = volume.spacing if volume.is_projection else _canonical_spacing(volume, orientation)
    size = target_shape(array.shape, spacing, settings["spacing"])
    image = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)[None]
    image = intensity_transform(modality, settings["ct_window"])(image)
    mode = "bilinear" if volume.is_projection else "trilinear"
    image = mt.Resize(size, mode=mode)(image).as_tensor().float()
    classes = None
    if mask is not None:
        if mask.array.shape != volume.array.shape:
            raise ImageError(f"mask shape {mask.array.shape} differs from the image's "
                             f"{volume.array.shape}")
        mask_array, _ = _canonical(mask)
        values = torch.as_tensor(classes_of(np.ascontiguousarray(mask_array)))[None]
        classes = mt.Resize(size, mode="nearest")(values.float()).as_tensor()[0].long()
    return Prepared(image, classes, orientation, tuple(array.shape),
                    _network_affine(volume, orientation, tuple(array.shape), size))


def restore(scores: torch.Tensor, prepared: Prepared) -> np.ndarray:
    """Per-class scores (C, *network space) -> class indices on the input's own grid."""
    mode = "bilinear" if scores.ndim == 3 else "trilinear"
    resized = mt.Resize(prepared.shape, mode=mode)(scores).as_tensor()
    classes = resized.argmax(0).numpy().astype(np.int16)
    if scores.ndim == 3:
        return classes
    back = nib.orientations.ornt_transform(RAS, prepared.orientation)
    return np.ascontiguousarray(nib.orientations.apply_orientation(classes, back))


@contextmanager
def without_metadata() -> Iterator[None]:
    """Run MONAI transforms on plain tensors, without MetaTensor bookkeeping: the same
    arrays and random draws, about 6x faster on small training samples (which need no
    affine)."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def augmentation(patch: tuple[int, ...], augment: bool,
                 shift: tuple[float, ...] = (), zoom: float = 0.0,
                 intensity: str = "standard") -> mt.Compose:
    """Training transforms on {'image': (1, *S), 'label': (1, *S)}: pad, random crop, then a
    random translation by up to ``shift`` voxels per axis and rescaling by up to ``zoom``
    (e.g. 0.15: 0.85-1.15x) where either is set, then (if ``augment``) random flips,
    intensity scale/shift and noise, and with ``intensity`` "cross-modality" the
    cross-modality steps (``tasks.blocks.intensity``: GIN, bias field, contrast,
    histogram shift)."""
    steps: list[mt.Transform] = [
        mt.SpatialPadd(["image", "label"], patch),
        mt.RandSpatialCropd(["image", "label"], patch, random_size=False),
    ]
    if any(shift) or zoom:
        steps.append(mt.RandAffined(["image", "label"], prob=1.0, translate_range=shift,
                                    scale_range=(zoom,) * len(patch),
                                    mode=("bilinear", "nearest"), padding_mode="zeros"))
    if augment:
        steps += [
            mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
            mt.RandScaleIntensityd("image", factors=0.15, prob=0.8),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=0.8),
            mt.RandGaussianNoised("image", prob=0.3, std=0.03),
        ]
        if intensity == "cross-modality":
            steps += cross_modality("image")
    return mt.Compose(steps)
