"""The segmenter block: a U-Net over label maps, with its preprocessing, training data,
batch loss and sliding-window class prediction. Segmentation is this block as a task;
labelling and the Cobb angle build on it with label maps of their own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.cache import PreparedCache
from tasks.blocks.classes import class_table
from tasks.blocks.dataset import prepare_rows, train_loader
from tasks.blocks.inference import score_image
from tasks.blocks.loss import build_loss
from tasks.blocks.model import build_network
from tasks.blocks.transforms import prepare, restore
from tasks.contract import PatientDraws
from tasks.imageio import Volume
from tasks.manifest import Manifest


class Segmenter:
    """A U-Net segmenting (B, 1, *S) images into ``table``'s classes (2D slices or 3D
    patches, by ``settings['network']``), trained with Dice + cross-entropy."""

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities it reads (``settings['modalities']``)."""
        return tuple(self.settings["modalities"])

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.table = class_table(self.settings["labels"])
        self.spatial_dims = 2 if self.settings["network"] == "unet2d" else 3
        self.divisor = 2 ** (len(self.settings["channels"]) - 1)
        self.loss = build_loss()

    def masked_rows(self, manifest: Manifest) -> Manifest:
        """Rows of the settings' modalities that have a mask (radiographs only in 2D)."""
        modalities = [m for m in self.settings["modalities"]
                      if self.spatial_dims == 2 or m != "XR"]
        chosen = manifest.select(modality=tuple(modalities))
        has_mask = chosen.table["mask"] != "" if "mask" in chosen.table else False
        return Manifest(chosen.table[has_mask].reset_index(drop=True), chosen.root)

    def build_model(self) -> nn.Module:
        return build_network(self.settings, self.table.count)

    def train_data(self, rows: Manifest, batch_size: int, seed: int,
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        """Batches of every row's image and target (prepared once, kept in memory)."""
        prepared = prepare_rows(rows, self.settings, self.table, cache=cache)
        return train_loader(prepared, self.settings, batch_size, seed,
                            list(rows.table.patient_id), per_patient)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
                   device: torch.device) -> torch.Tensor:
        logits = model(batch["image"].to(device))
        return self.loss(logits.float(), batch["label"].to(device))

    def scores(self, model: nn.Module, volume: Volume, modality: str, device: torch.device
               ) -> tuple[torch.Tensor, Any]:
        """(C, *S) class scores on the network's grid, and the prepared image (its affine)."""
        prepared = prepare(volume, modality, self.settings)
        spatial = self.settings["patch_size"][: self.spatial_dims]
        return score_image(model, prepared.image, self.spatial_dims, self.divisor, spatial,
                           device), prepared

    def classes(self, model: nn.Module, volume: Volume, modality: str,
                device: torch.device) -> np.ndarray:
        """Predicted class indices on the input's own grid."""
        scores, prepared = self.scores(model, volume, modality, device)
        return restore(scores, prepared)
