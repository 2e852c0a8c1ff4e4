"""The segmentation task: vertebrae, discs and spinal canal on CT, MR and radiographs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.config import Key
from tasks.contract import Evaluation, accepted_modality
from tasks.imageio import Volume, load_image
from tasks.labels import STRUCTURES
from tasks.local_epoch import train_steps
from tasks.manifest import Manifest
from tasks.outputs import MaskOutput
from tasks.segmentation.classes import class_table
from tasks.segmentation.config import KEYS
from tasks.segmentation.dataset import prepare_rows, train_loader
from tasks.segmentation.inference import score_image
from tasks.segmentation.loss import build_loss
from tasks.segmentation.metric import segmentation_metrics
from tasks.segmentation.model import build_network
from tasks.segmentation.transforms import prepare, restore


class SegmentationTask:
    """Segment vertebrae, discs and the canal (structure or level classes) with a MONAI U-Net."""

    name: ClassVar[str] = "segmentation"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "dice_mean"
    output_suffix: ClassVar[str] = "_pred.nii.gz"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.table = class_table(self.settings["labels"])
        self.spatial_dims = 2 if self.settings["network"] == "unet2d" else 3
        self.divisor = 2 ** (len(self.settings["channels"]) - 1)
        self.loss = build_loss()

    def select(self, manifest: Manifest) -> Manifest:
        """Rows of the task's modalities that have a mask (radiographs only for 2D networks)."""
        modalities = [m for m in self.settings["modalities"]
                      if self.spatial_dims == 2 or m != "XR"]
        chosen = manifest.select(modality=tuple(modalities))
        has_mask = chosen.table["mask"] != "" if "mask" in chosen.table else False
        return Manifest(chosen.table[has_mask].reset_index(drop=True), chosen.root)

    def build_model(self) -> nn.Module:
        return build_network(self.settings, self.table.count)

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: bool = False) -> DataLoader:
        rows = self.select(manifest)
        prepared = prepare_rows(rows, self.settings, self.table)
        patients = list(rows.table.patient_id) if per_patient else None
        return train_loader(prepared, self.settings, batch_size, seed, patients)

    def train_epoch(self, model: nn.Module, batches: Iterable[Any],
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    max_steps: int | None = None,
                    penalty: Callable[[nn.Module], torch.Tensor] | None = None
                    ) -> dict[str, float]:
        def batch_loss(net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = net(batch["image"].to(device))
            return self.loss(logits.float(), batch["label"].to(device))

        return train_steps(model, batches, optimizer, device, batch_loss, max_steps, penalty)

    def classes(self, model: nn.Module, volume: Volume, modality: str,
                device: torch.device) -> np.ndarray:
        """Predicted class indices on the input's own grid."""
        prepared = prepare(volume, modality, self.settings)
        scores = score_image(model, prepared.image, self.spatial_dims, self.divisor,
                             self.settings["patch_size"][: self.spatial_dims], device)
        return restore(scores, prepared)

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                centroids: list[dict[str, Any]] | None = None) -> MaskOutput:
        modality = accepted_modality(volume, self.settings["modalities"])
        classes = self.classes(model, volume, modality, device)
        return MaskOutput(Volume(self.table.to_values(classes), volume.affine, modality))

    def evaluate(self, model: nn.Module, manifest: Manifest, device: torch.device) -> Evaluation:
        rows = []
        for row in self.select(manifest).rows():
            start = time.perf_counter()
            image = load_image(manifest.path(row))
            truth = self.table.to_classes(load_image(manifest.path(row, "mask")).array)
            predicted = self.classes(model, image, row["modality"], device)
            metrics = segmentation_metrics(predicted, truth, self.table, image.spacing,
                                           self.settings["hd95"])
            rows.append({"patient_id": row["patient_id"], "image": row["image"],
                         "modality": row["modality"], "site": row["site"], **metrics,
                         "seconds": time.perf_counter() - start})
        per_image = pd.DataFrame(rows)
        metrics = dict.fromkeys(self.metric_names(), float("nan"))
        if rows:
            for name in metrics:
                if name in per_image:
                    metrics[name] = float(per_image[name].mean(skipna=True))
            for modality, group in per_image.groupby("modality"):
                metrics[f"dice_mean_{modality}"] = float(group["dice_mean"].mean())
        return Evaluation(metrics, per_image)

    def metric_names(self) -> tuple[str, ...]:
        per_class = [f"dice_{n.replace('/', '-')}" for n in self.table.names[1:]]
        structures = [f"dice_{s}" for s in STRUCTURES]
        modalities = [f"dice_mean_{m}" for m in self.settings["modalities"]]
        extra = ["hd95_mean"] if self.settings["hd95"] else []
        return tuple(dict.fromkeys([*per_class, *structures, "dice_mean", *modalities, *extra]))

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "labels": self.settings["labels"],
                "classes": {int(v): n for v, n in zip(self.table.values, self.table.names,
                                                      strict=True)}}
