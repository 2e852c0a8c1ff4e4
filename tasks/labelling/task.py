"""The labelling task: a 3D U-Net scores each vertebra level at coarse resolution, whole
spine in view; the scores, read along the spine, are decoded into one run of consecutive
vertebrae (tasks/labelling/sequence.py) whose centroids are the output.

The network sees the whole lumbar spine in one patch (4 mm voxels by default) and is
trained with random shifts and rescaling, so it names levels by counting from the sacrum,
not by where they sit in the patch; centroids are written in the input's voxel
coordinates, VerSe style.
"""

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
from tasks.labelling.centroids import Centroids, centroid_list, read_centroids
from tasks.labelling.config import KEYS
from tasks.labelling.metric import identification, pool, rates
from tasks.labelling.sequence import decode
from tasks.manifest import Manifest
from tasks.outputs import RecordOutput
from tasks.points import label_centroids, read_points
from tasks.segmentation.classes import NAMED_VERTEBRAE
from tasks.segmentation.dataset import prepare_rows, train_loader
from tasks.segmentation.inference import score_image
from tasks.segmentation.task import SegmentationTask
from tasks.segmentation.transforms import prepare


class LabellingTask:
    """Name and locate every vertebra (T1-L5, sacrum): a VerSe-style centroid list per image."""

    name: ClassVar[str] = "labelling"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "id_rate"
    output_suffix: ClassVar[str] = "_ctd.json"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.levels = SegmentationTask({**self.settings, "network": "unet3d",
                                        "labels": "vertebrae", "hd95": False})

    def select(self, manifest: Manifest) -> Manifest:
        """Rows of the task's modalities with a mask (the training target)."""
        return self.levels.select(manifest)

    def build_model(self) -> nn.Module:
        return self.levels.build_model()

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: bool = False) -> DataLoader:
        rows = self.select(manifest)
        prepared = prepare_rows(rows, self.levels.settings, self.levels.table)
        patients = list(rows.table.patient_id) if per_patient else None
        return train_loader(prepared, self.levels.settings, batch_size, seed, patients)

    def train_epoch(self, model: nn.Module, batches: Iterable[Any],
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    max_steps: int | None = None,
                    penalty: Callable[[nn.Module], torch.Tensor] | None = None
                    ) -> dict[str, float]:
        return self.levels.train_epoch(model, batches, optimizer, device, max_steps, penalty)

    def centroids(self, model: nn.Module, volume: Volume, modality: str,
                  device: torch.device) -> Centroids:
        """Predicted world positions (mm) of the vertebrae found in ``volume``."""
        prepared = prepare(volume, modality, self.levels.settings)
        scores = score_image(model, prepared.image, 3, self.levels.divisor,
                             self.settings["patch_size"], device)
        voxel = float(np.prod(self.settings["spacing"]))
        return decode(scores[1:].numpy(), self.levels.table.values[1:], prepared.affine,
                      self.settings["min_volume"] / voxel)

    def truth(self, manifest: Manifest, row: dict[str, str], image: Volume) -> Centroids:
        """Ground-truth centroids: the row's centroid file, else each mask label's centre."""
        if row.get("centroids"):
            return read_centroids(read_points(manifest.path(row, "centroids")), image.affine)
        mask = load_image(manifest.path(row, "mask"))
        return label_centroids(mask.array, mask.affine, NAMED_VERTEBRAE)

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                centroids: list[dict[str, Any]] | None = None) -> RecordOutput:
        modality = accepted_modality(volume, self.settings["modalities"])
        found = self.centroids(model, volume, modality, device)
        return RecordOutput(centroid_list(found, volume.affine))

    def evaluate(self, model: nn.Module, manifest: Manifest, device: torch.device) -> Evaluation:
        rows = []
        for row in self.select(manifest).rows():
            start = time.perf_counter()
            image = load_image(manifest.path(row))
            counts = identification(self.centroids(model, image, row["modality"], device),
                                    self.truth(manifest, row, image), self.settings["radius"])
            rows.append({"patient_id": row["patient_id"], "image": row["image"],
                         "modality": row["modality"], "site": row["site"], **counts,
                         **rates(counts), "seconds": time.perf_counter() - start})
        metrics = dict.fromkeys(self.metric_names(), float("nan"))
        if rows:
            metrics.update(pool(rows))
            for modality in self.settings["modalities"]:
                chosen = [r for r in rows if r["modality"] == modality]
                if chosen:
                    metrics[f"id_rate_{modality}"] = pool(chosen)["id_rate"]
        return Evaluation(metrics, pd.DataFrame(rows))

    def metric_names(self) -> tuple[str, ...]:
        return ("id_rate", "localisation_mm",
                *(f"id_rate_{m}" for m in self.settings["modalities"]))

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "format": "VerSe centroid list: a direction entry, then "
                "label (VerSe value) and X, Y, Z in voxel coordinates of the input",
                "labels": {v: self.levels.table.names[i]
                           for i, v in enumerate(self.levels.table.values) if v}}
