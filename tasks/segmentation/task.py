"""The segmentation task: vertebrae, discs and spinal canal on CT, MR and radiographs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.bundle import bundle_configs
from tasks.blocks.cache import PreparedCache
from tasks.blocks.model import UNET_PARTS
from tasks.blocks.segmenter import Segmenter
from tasks.config import Key
from tasks.contract import ImageScore, PatientDraws, accepted_modality
from tasks.evaluation import score_rows
from tasks.imageio import Volume, load_image
from tasks.labels import STRUCTURES
from tasks.manifest import Manifest
from tasks.outputs import MaskOutput
from tasks.segmentation.config import KEYS
from tasks.segmentation.metric import segmentation_metrics


class SegmentationTask(Segmenter):
    """Segment vertebrae, discs and the canal (structure or level classes) with a MONAI U-Net."""

    name: ClassVar[str] = "segmentation"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "dice_mean"
    output_suffix: ClassVar[str] = "_pred.nii.gz"
    inputs: ClassVar[dict[str, str]] = {}
    parts: ClassVar[dict[str, str]] = UNET_PARTS

    def select(self, manifest: Manifest) -> Manifest:
        """Rows of the task's modalities that have a mask (radiographs only for 2D networks)."""
        return self.masked_rows(manifest)

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        return super().train_data(self.select(manifest), batch_size, seed, per_patient,
                                  cache)

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                extra: Mapping[str, Any]) -> MaskOutput:
        modality = accepted_modality(volume, self.settings["modalities"])
        classes = self.classes(model, volume, modality, device)
        return MaskOutput(Volume(self.table.to_values(classes), volume.affine, modality))

    def score_image(self, model: nn.Module, manifest: Manifest, row: dict[str, str],
                    device: torch.device) -> ImageScore:
        image = load_image(manifest.path(row))
        truth = self.table.to_classes(load_image(manifest.path(row, "mask")).array)
        predicted = self.classes(model, image, row["modality"], device)
        return ImageScore(segmentation_metrics(predicted, truth, self.table, image.spacing,
                                               self.settings["hd95"]))

    def summarise(self, scores: list[ImageScore]) -> dict[str, float]:
        return score_rows(scores, self.metric_names())

    def metric_names(self) -> tuple[str, ...]:
        per_class = [f"dice_{n.replace('/', '-')}" for n in self.table.names[1:]]
        structures = [f"dice_{s}" for s in STRUCTURES]
        extra = ["hd95_mean"] if self.settings["hd95"] else []
        return tuple(dict.fromkeys([*per_class, *structures, "dice_mean", *extra]))

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "labels": self.settings["labels"],
                "classes": {int(v): n for v, n in zip(self.table.values, self.table.names,
                                                      strict=True)}}

    def bundle_configs(self) -> dict[str, dict[str, Any]]:
        return bundle_configs(self.settings, self.table)
