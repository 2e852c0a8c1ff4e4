"""Training data from a manifest: images prepared once, then sampled as slices or patches."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import torch
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from tasks.blocks.cache import PreparedCache, cached
from tasks.blocks.classes import ClassTable
from tasks.blocks.transforms import Prepared, augmentation, prepare, without_metadata
from tasks.contract import PatientDraws
from tasks.imageio import Volume, load_image
from tasks.manifest import Manifest

Target = Callable[[Manifest, dict[str, str], Volume], Volume]


def mask_target(manifest: Manifest, row: dict[str, str], image: Volume) -> Volume:
    """The training target of a row: its mask file."""
    return load_image(manifest.path(row, "mask"))


def prepare_rows(manifest: Manifest, settings: dict[str, Any], table: ClassTable,
                 target: Target = mask_target, description: str = "Preparing images",
                 cache: PreparedCache | None = None) -> list[Prepared]:
    """Every row's image and target label map (its mask, unless ``target`` makes one from the
    row and image) in network space, loaded once and kept in memory (read from ``cache``
    where it holds the row, stored there otherwise)."""
    recipe = {"prepare": "rows", "spacing": settings["spacing"],
              "ct_window": settings["ct_window"], "lookup": table.lookup.tolist(),
              "target": f"{target.__module__}.{target.__qualname__}"}
    prepared = []
    for row in track(manifest.rows(), description=description, transient=True):
        make = functools.partial(_prepare_row, manifest, row, settings, table, target)
        prepared.append(cached(cache, manifest, row, recipe, make, Prepared.arrays,
                               Prepared.from_arrays))
    return prepared


def _prepare_row(manifest: Manifest, row: dict[str, str], settings: dict[str, Any],
                 table: ClassTable, target: Target) -> Prepared:
    image = load_image(manifest.path(row))
    labels = target(manifest, row, image)
    return prepare(image, row["modality"], settings, labels, table.to_classes)


def _slices(prepared: Prepared, spatial_dims: int) -> int:
    """Training samples one prepared image gives: its axial slices (2D) or one patch (3D)."""
    return prepared.image.shape[-1] if spatial_dims == 2 and prepared.image.ndim == 4 else 1


class SampleDataset(Dataset):
    """Training samples: every axial slice (2D; a radiograph is one slice) or one random patch
    per image (3D). Items are {'image': (1, *patch), 'label': (1, *patch)}."""

    def __init__(self, prepared: list[Prepared], spatial_dims: int, settings: dict[str, Any]
                 ) -> None:
        self.prepared = prepared
        self.spatial_dims = spatial_dims
        shift = [mm / s for mm, s in zip(settings["shift"], settings["spacing"], strict=True)]
        self.transform = augmentation(tuple(settings["patch_size"][:spatial_dims]),
                                      settings["augment"], tuple(shift[:spatial_dims]),
                                      settings["zoom"], settings["intensity_augmentation"])
        self.index = [(i, z) for i, p in enumerate(prepared)
                      for z in range(_slices(p, spatial_dims))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.sample(*self.index[item])

    def sample(self, volume: int, z: int) -> dict[str, torch.Tensor]:
        """Slice ``z`` of prepared image ``volume`` (a random patch in 3D), augmented."""
        p = self.prepared[volume]
        image, label = p.image, p.classes[None]
        if self.spatial_dims == 2 and image.ndim == 4:
            image, label = image[..., z], label[..., z]
        with without_metadata():
            sample = self.transform({"image": image, "label": label})
        return {"image": torch.as_tensor(sample["image"]).float(),
                "label": torch.as_tensor(sample["label"]).long()}


class PatientDataset(Dataset):
    """One item per patient, for patient-level DP: each access draws ``draws.slices`` of the
    patient's training samples (an image, then a slice or patch of it) uniformly at random
    with replacement, and augments each ``draws.augmentations`` times; every tensor of the
    item is the samples' stacked on a leading axis, (draws.size, *sample shape)."""

    def __init__(self, samples: SampleDataset | Dataset, patients: list[str], seed: int,
                 draws: PatientDraws) -> None:
        self.samples, self.draws = samples, draws
        by_patient: dict[str, list[tuple[int, int]]] = {}
        for volume, z in samples.index:
            by_patient.setdefault(patients[volume], []).append((volume, z))
        self.patients = list(by_patient)
        self.choices = [by_patient[p] for p in self.patients]
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        drawn = [self.rng.choice(self.choices[item]) for _ in range(self.draws.slices)]
        samples = [self.samples.sample(*chosen) for chosen in drawn
                   for _ in range(self.draws.augmentations)]
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def train_loader(prepared: list[Prepared], settings: dict[str, Any], batch_size: int,
                 seed: int, patients: list[str], draws: PatientDraws | None = None
                 ) -> DataLoader:
    """Shuffled batches of training samples; the sampling and augmentation follow ``seed``.

    With ``draws``, items are patients (``patients``: each prepared image's) instead of
    samples (``PatientDataset``), for patient-level DP.
    """
    spatial_dims = 2 if settings["network"] == "unet2d" else 3
    dataset = SampleDataset(prepared, spatial_dims, settings)
    dataset.transform.set_random_state(seed=seed)
    if draws is not None:
        per_patient = PatientDataset(dataset, patients, seed, draws)
        return DataLoader(per_patient, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      drop_last=len(dataset) > batch_size)

