"""Disc crops: three sagittal slices around each disc centre, with the level's labels.

A row's image is put in RAS at ``pixel`` mm once (the segmentation transforms),
then each disc gives a (3, H, W) crop: sagittal slices at -slab, 0, +slab mm
laterally, H along antero-posterior, W along cranio-caudal; outside the image is 0.
Training augments with shifts of up to 3 pixels, intensity scale/shift, noise
and lateral flips, and with ``intensity_augmentation = "cross-modality"`` the random
intensity mappings of ``tasks/blocks/intensity.py`` (the same mapping on the three slices).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from tasks.blocks.cache import PreparedCache, cached
from tasks.blocks.dataset import PatientDataset
from tasks.blocks.intensity import cross_modality
from tasks.blocks.transforms import prepare
from tasks.contract import PatientDraws
from tasks.grading.discs import disc_centres
from tasks.imageio import Volume, load_image
from tasks.manifest import Manifest
from tasks.points import to_voxels


@dataclass
class Disc:
    """One disc crop and its labels: Pfirrmann grade 0-4 (grade - 1) and stenosis severity 0-2,
    -1 where the manifest has none."""

    level: str
    crop: torch.Tensor
    grade: int
    severity: int
    centre: np.ndarray


def crops(volume: Volume, modality: str, centres: dict[str, np.ndarray],
          settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Disc level -> (3, H, W) crop around its world centre."""
    pixel = settings["pixel"]
    prepared = prepare(volume, modality, {"spacing": [pixel] * 3,
                                          "ct_window": settings["ct_window"]})
    image = prepared.image[0]
    size = [max(1, round(extent / pixel)) for extent in settings["crop"]]
    offset = round(settings["slab"] / pixel)
    out = {}
    for level, centre in centres.items():
        x, y, z = np.round(to_voxels(centre[None], prepared.affine)[0]).astype(int)
        crop = torch.zeros(3, *size)
        y0, z0 = y - size[0] // 2, z - size[1] // 2
        for channel, dx in enumerate((-offset, 0, offset)):
            if not 0 <= x + dx < image.shape[0]:
                continue
            ys = slice(max(y0, 0), min(y0 + size[0], image.shape[1]))
            zs = slice(max(z0, 0), min(z0 + size[1], image.shape[2]))
            if ys.start < ys.stop and zs.start < zs.stop:
                crop[channel, ys.start - y0:ys.stop - y0, zs.start - z0:zs.stop - z0] = (
                    image[x + dx, ys, zs])
        out[level] = crop
    return out


def _label(row: dict[str, str], column: str, shift: int = 0) -> int:
    value = row.get(column, "")
    return int(float(value)) - shift if value != "" else -1


def row_discs(manifest: Manifest, row: dict[str, str], settings: dict[str, Any]) -> list[Disc]:
    """Every disc level of a row that has a position, with its crop and labels."""
    image = load_image(manifest.path(row))
    centres = disc_centres(manifest, row, image)
    return [Disc(level, crop, _label(row, f"pfirrmann_{level}", 1),
                 _label(row, f"spinal_canal_stenosis_{level}"), centres[level])
            for level, crop in crops(image, row["modality"], centres, settings).items()]


def prepare_discs(manifest: Manifest, settings: dict[str, Any],
                  cache: PreparedCache | None = None) -> list[list[Disc]]:
    """The discs of every row (loaded once, kept in memory; read from ``cache`` where it
    holds the row, stored there otherwise)."""
    recipe = {"prepare": "discs", **{k: settings[k] for k in ("pixel", "crop", "slab",
                                                                "ct_window")}}
    return [cached(cache, manifest, row, recipe,
                   functools.partial(row_discs, manifest, row, settings), _arrays, _from_arrays)
            for row in track(manifest.rows(), description="Cropping discs", transient=True)]


def _arrays(discs: list[Disc]) -> dict[str, np.ndarray]:
    """A row's discs as arrays (what ``tasks.blocks.cache`` stores)."""
    return {"level": np.array([d.level for d in discs], dtype=str),
            "crop": np.stack([d.crop.numpy() for d in discs]) if discs else np.zeros(0),
            "grade": np.array([d.grade for d in discs], dtype=np.int64),
            "severity": np.array([d.severity for d in discs], dtype=np.int64),
            "centre": np.array([d.centre for d in discs], dtype=np.float64)}


def _from_arrays(arrays: dict[str, np.ndarray]) -> list[Disc]:
    return [Disc(str(level), torch.from_numpy(crop), int(grade), int(severity), centre)
            for level, crop, grade, severity, centre in zip(
                arrays["level"], arrays["crop"], arrays["grade"], arrays["severity"],
                arrays["centre"], strict=True)]


class DiscDataset(Dataset):
    """Labelled disc crops; items are {'image': (3, H, W), 'grade': (), 'severity': ()}."""

    def __init__(self, discs: list[list[Disc]], augment: bool, seed: int,
                 intensity: mt.Compose | None = None) -> None:
        self.discs = discs
        self.augment = augment
        self.rng = random.Random(seed)
        self.intensity = intensity.set_random_state(seed) if intensity else None
        self.index = [(i, j) for i, row in enumerate(discs) for j, d in enumerate(row)
                      if d.grade >= 0 or d.severity >= 0]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.sample(*self.index[item])

    def sample(self, row: int, disc: int) -> dict[str, torch.Tensor]:
        """Disc ``disc`` of row ``row``, augmented."""
        d = self.discs[row][disc]
        image = d.crop
        if self.augment:
            shift = [self.rng.randint(-3, 3) for _ in range(2)]
            image = torch.roll(image, shifts=shift, dims=(1, 2))
            image = image * self.rng.uniform(0.85, 1.15) + self.rng.uniform(-0.1, 0.1)
            image = image + 0.03 * torch.randn(image.shape) * (self.rng.random() < 0.3)
            if self.rng.random() < 0.5:
                image = image.flip(0)
            if self.intensity is not None:
                image = torch.as_tensor(self.intensity({"image": image})["image"])
        return {"image": image.float(), "grade": torch.tensor(d.grade),
                "severity": torch.tensor(d.severity)}


def disc_loader(discs: list[list[Disc]], settings: dict[str, Any], batch_size: int, seed: int,
                patients: list[str], draws: PatientDraws | None = None) -> DataLoader:
    """Shuffled batches of disc crops; with ``draws``, one item per patient (``patients``:
    each row's) drawing its discs at random (patient-level DP)."""
    cross = settings["intensity_augmentation"] == "cross-modality"
    dataset = DiscDataset(discs, settings["augment"], seed,
                          mt.Compose(cross_modality("image")) if cross else None)
    generator = torch.Generator().manual_seed(seed)
    if draws is not None:
        return DataLoader(PatientDataset(dataset, patients, seed, draws),
                          batch_size=batch_size, shuffle=True, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      drop_last=len(dataset) > batch_size)
