"""Crop classifiers: three sagittal slices around named points, graded by a DenseNet.

What disc grading (a crop per disc level) and fracture grading (a crop per vertebra) share:

- ``sagittal_crops``: a row's image is put in RAS at ``pixel`` mm once (the segmentation
  transforms), then each point gives a (3, H, W) crop: sagittal slices at -slab, 0, +slab
  mm laterally, H along antero-posterior, W along cranio-caudal; outside the image is 0;
- ``labelled_rows``: the rows with a position to crop at and a label;
- ``Crop``, its arrays (what ``tasks.blocks.cache`` stores) and ``prepare_crops``;
- ``crop_loader``: shuffled training batches, augmented with shifts of up to 3 pixels,
  intensity scale/shift, noise and lateral flips, and with ``intensity_augmentation =
  "cross-modality"`` the random intensity mappings of ``tasks/blocks/intensity.py``;
- ``crop_classifier``: the DenseNet, and ``crop_logits`` of a stack of crops.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.networks.nets import DenseNet
from rich.progress import track
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tasks.blocks.cache import PreparedCache, cached
from tasks.blocks.dataset import PatientDataset
from tasks.blocks.intensity import cross_modality
from tasks.blocks.transforms import prepare, without_metadata
from tasks.contract import PatientDraws
from tasks.device import autocast
from tasks.imageio import Volume, load_image
from tasks.manifest import Manifest
from tasks.points import label_centroids, labelled_world, read_points, to_voxels

# Parts DP-SGD may train alone (``privacy.trainable``): the classifier after the features.
CLASSIFIER_PARTS = {"head": r"^class_layers\."}


@dataclass
class Crop:
    """One crop around a named point (a disc level, a vertebra) and its labels, one per head
    of the classifier (-1 where the manifest has none)."""

    name: str
    image: torch.Tensor
    labels: tuple[int, ...]
    centre: np.ndarray


def row_grade(row: dict[str, str], column: str, first: int = 0) -> int:
    """A manifest row's grade in ``column`` as a class index (``first``: the lowest grade,
    class 0); -1 where the row has none."""
    value = row.get(column, "")
    return int(float(value)) - first if value != "" else -1


def sagittal_crops(volume: Volume, modality: str, centres: dict[str, np.ndarray],
                   settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Point name -> (3, H, W) crop around its world centre (``settings``: pixel, crop,
    slab, ct_window)."""
    pixel = settings["pixel"]
    prepared = prepare(volume, modality, {"spacing": [pixel] * 3,
                                          "ct_window": settings["ct_window"]})
    image = prepared.image[0]
    size = [max(1, round(extent / pixel)) for extent in settings["crop"]]
    offset = round(settings["slab"] / pixel)
    out = {}
    for name, centre in centres.items():
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
        out[name] = crop
    return out


def crop_arrays(crops: list[Crop], heads: int) -> dict[str, np.ndarray]:
    """A row's crops as arrays (what ``tasks.blocks.cache`` stores)."""
    return {"name": np.array([c.name for c in crops], dtype=str),
            "image": np.stack([c.image.numpy() for c in crops]) if crops else np.zeros(0),
            "labels": np.array([c.labels for c in crops], dtype=np.int64).reshape(-1, heads),
            "centre": np.array([c.centre for c in crops], dtype=np.float64)}


def crops_of_arrays(arrays: dict[str, np.ndarray]) -> list[Crop]:
    return [Crop(str(name), torch.from_numpy(image), tuple(int(v) for v in labels), centre)
            for name, image, labels, centre in zip(
                arrays["name"], arrays["image"], arrays["labels"], arrays["centre"],
                strict=True)]


def vertebra_positions(manifest: Manifest, row: dict[str, str], image: Volume,
                       labels: tuple[int, ...]) -> dict[int, np.ndarray] | None:
    """VerSe label -> world centre (mm) of the vertebrae ``labels`` for a manifest row: from
    its centroid list, else from its mask's labels; None when it has neither."""
    if row.get("centroids"):
        found = labelled_world(read_points(manifest.path(row, "centroids")), image.affine)
        return {label: centre for label, centre in found.items() if label in labels}
    if row.get("mask"):
        mask = load_image(manifest.path(row, "mask"))
        return label_centroids(mask.array, mask.affine, labels)
    return None


def prepare_crops(manifest: Manifest, settings: dict[str, Any], cache: PreparedCache | None,
                  row_crops: Callable[[Manifest, dict[str, str], dict[str, Any]], list[Crop]],
                  heads: int, what: str) -> list[list[Crop]]:
    """``row_crops`` of every row, loaded once and kept in memory; read from ``cache`` where
    it holds the row, stored there otherwise (``what``: the crops' kind, e.g. 'discs')."""
    recipe = {"prepare": f"crops of {what}",
              **{k: settings[k] for k in ("pixel", "crop", "slab", "ct_window")}}
    return [cached(cache, manifest, row, recipe,
                   functools.partial(row_crops, manifest, row, settings),
                   functools.partial(crop_arrays, heads=heads), crops_of_arrays)
            for row in track(manifest.rows(), description=f"Cropping {what}", transient=True)]


def labelled_rows(manifest: Manifest, modalities: list[str], prefixes: tuple[str, ...],
                  positions: tuple[str, ...] = ("centroids", "mask", "keypoints")) -> Manifest:
    """Rows of ``modalities`` with a position to crop at (one of the ``positions`` columns)
    and at least one label (a column starting with one of ``prefixes``)."""
    table = manifest.select(modality=tuple(modalities)).table
    located = np.zeros(len(table), dtype=bool)
    for column in positions:
        if column in table:
            located |= (table[column] != "").to_numpy()
    labels = [c for c in table.columns if c.startswith(prefixes)]
    labelled = ((table[labels] != "").any(axis=1).to_numpy() if labels
                else np.zeros(len(table), dtype=bool))
    return Manifest(table[located & labelled].reset_index(drop=True), manifest.root)


@torch.no_grad()
def crop_logits(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, outputs) logits of (N, 3, H, W) crops, in float32 on the CPU (the model in eval
    mode, autocast on CUDA)."""
    model.eval()
    with autocast(device):
        return model(images.to(device)).float().cpu()


class CropDataset(Dataset):
    """Crops with at least one label; items are {'image': (3, H, W), 'labels': (K,)}."""

    def __init__(self, crops: list[list[Crop]], augment: bool, seed: int,
                 intensity: mt.Compose | None = None) -> None:
        self.crops = crops
        self.augment = augment
        self.rng = random.Random(seed)
        self.intensity = intensity.set_random_state(seed) if intensity else None
        self.index = [(i, j) for i, row in enumerate(crops) for j, c in enumerate(row)
                      if max(c.labels) >= 0]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.sample(*self.index[item])

    def sample(self, row: int, crop: int) -> dict[str, torch.Tensor]:
        """Crop ``crop`` of row ``row``, augmented."""
        c = self.crops[row][crop]
        image = c.image
        if self.augment:
            shift = [self.rng.randint(-3, 3) for _ in range(2)]
            image = torch.roll(image, shifts=shift, dims=(1, 2))
            image = image * self.rng.uniform(0.85, 1.15) + self.rng.uniform(-0.1, 0.1)
            image = image + 0.03 * torch.randn(image.shape) * (self.rng.random() < 0.3)
            if self.rng.random() < 0.5:
                image = image.flip(0)
            if self.intensity is not None:
                with without_metadata():  # plain tensors: MONAI's MetaTensor is far slower
                    image = torch.as_tensor(self.intensity({"image": image})["image"])
        return {"image": image.float(), "labels": torch.tensor(c.labels)}


def crop_loader(crops: list[list[Crop]], settings: dict[str, Any], batch_size: int, seed: int,
                patients: list[str], draws: PatientDraws | None = None) -> DataLoader:
    """Shuffled batches of crops; with ``draws``, one item per patient (``patients``: each
    row's) drawing its crops at random (patient-level DP)."""
    cross = settings["intensity_augmentation"] == "cross-modality"
    dataset = CropDataset(crops, settings["augment"], seed,
                          mt.Compose(cross_modality("image")) if cross else None)
    generator = torch.Generator().manual_seed(seed)
    if draws is not None:
        return DataLoader(PatientDataset(dataset, patients, seed, draws),
                          batch_size=batch_size, shuffle=True, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      drop_last=len(dataset) > batch_size)


def crop_classifier(settings: dict[str, Any], outputs: int) -> nn.Module:
    """DenseNet mapping (B, 3, H, W) sagittal crops to (B, ``outputs``) logits (``settings``:
    init_features, growth_rate, blocks). Instance norm: no running statistics (exact
    averaging, DP-ready); ReLU not in place (Opacus' per-sample hooks need the
    activations)."""
    return DenseNet(spatial_dims=2, in_channels=3, out_channels=outputs,
                    init_features=settings["init_features"],
                    growth_rate=settings["growth_rate"], block_config=tuple(settings["blocks"]),
                    act=("relu", {"inplace": False}), norm=("instance", {"affine": True}))
