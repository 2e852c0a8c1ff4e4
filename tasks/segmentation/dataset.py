"""Training data from a manifest: images prepared once, then sampled as slices or patches."""

from __future__ import annotations

from typing import Any

import torch
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from tasks.imageio import load_image
from tasks.manifest import Manifest
from tasks.segmentation.classes import ClassTable
from tasks.segmentation.transforms import Prepared, augmentation, prepare


def prepare_rows(manifest: Manifest, settings: dict[str, Any], table: ClassTable,
                 description: str = "Preparing images") -> list[Prepared]:
    """Every row's image and mask in network space (loaded once, kept in memory)."""
    prepared = []
    for row in track(manifest.rows(), description=description, transient=True):
        image = load_image(manifest.path(row))
        mask = load_image(manifest.path(row, "mask"))
        prepared.append(prepare(image, row["modality"], settings, mask, table.to_classes))
    return prepared


class SampleDataset(Dataset):
    """Training samples: every axial slice (2D; a radiograph is one slice) or one random patch
    per image (3D). Items are {'image': (1, *patch), 'label': (1, *patch)}."""

    def __init__(self, prepared: list[Prepared], spatial_dims: int, patch: list[int],
                 augment: bool) -> None:
        self.prepared = prepared
        self.spatial_dims = spatial_dims
        self.transform = augmentation(tuple(patch[:spatial_dims]), augment)
        if spatial_dims == 2:
            self.index = [(i, z) for i, p in enumerate(prepared)
                          for z in range(p.image.shape[-1] if p.image.ndim == 4 else 1)]
        else:
            self.index = [(i, 0) for i in range(len(prepared))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        volume, z = self.index[item]
        p = self.prepared[volume]
        image, label = p.image, p.classes[None]
        if self.spatial_dims == 2 and image.ndim == 4:
            image, label = image[..., z], label[..., z]
        sample = self.transform({"image": image, "label": label})
        return {"image": torch.as_tensor(sample["image"]).float(),
                "label": torch.as_tensor(sample["label"]).long()}


def train_loader(prepared: list[Prepared], settings: dict[str, Any], batch_size: int,
                 seed: int) -> DataLoader:
    """Shuffled batches of training samples; the sampling and augmentation follow ``seed``."""
    spatial_dims = 2 if settings["network"] == "unet2d" else 3
    dataset = SampleDataset(prepared, spatial_dims, settings["patch_size"], settings["augment"])
    dataset.transform.set_random_state(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      drop_last=len(dataset) > batch_size)

