"""The labelling task: a 3D U-Net scores each vertebra level at coarse resolution, whole
spine in view; the scores, read along the spine, are decoded into one run of consecutive
vertebrae (tasks/labelling/sequence.py) whose centroids are the output.

The network sees the whole lumbar spine in one patch (4 mm voxels by default) and is
trained with random shifts and rescaling, so it names levels by counting from the sacrum,
not by where they sit in the patch; centroids are written in the input's voxel
coordinates, VerSe style.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.cache import PreparedCache
from tasks.blocks.classes import NAMED_VERTEBRAE
from tasks.blocks.model import UNET_PARTS
from tasks.blocks.segmenter import Segmenter
from tasks.config import Key
from tasks.contract import ImageScore, PatientDraws, accepted_modality, without_bundle
from tasks.imageio import Volume, load_image
from tasks.labelling.centroids import Centroids, centroid_list, read_centroids
from tasks.labelling.config import KEYS
from tasks.labelling.metric import identification, pool, rates
from tasks.labelling.sequence import decode
from tasks.manifest import Manifest
from tasks.outputs import RecordOutput
from tasks.points import label_centroids, read_points


class LabellingTask:
    """Name and locate every vertebra (T1-L5, sacrum): a VerSe-style centroid list per image."""

    name: ClassVar[str] = "labelling"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "id_rate"
    output_suffix: ClassVar[str] = "_ctd.json"
    inputs: ClassVar[dict[str, str]] = {}
    parts: ClassVar[dict[str, str]] = UNET_PARTS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.levels = Segmenter({**self.settings, "network": "unet3d", "labels": "vertebrae"})

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.levels.modalities

    def select(self, manifest: Manifest) -> Manifest:
        """Rows of the task's modalities with a mask (the training target)."""
        return self.levels.masked_rows(manifest)

    def build_model(self) -> nn.Module:
        return self.levels.build_model()

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        return self.levels.train_data(self.select(manifest), batch_size, seed, per_patient,
                                      cache)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
                   device: torch.device) -> torch.Tensor:
        return self.levels.batch_loss(model, batch, device)

    def centroids(self, model: nn.Module, volume: Volume, modality: str,
                  device: torch.device) -> Centroids:
        """Predicted world positions (mm) of the vertebrae found in ``volume``."""
        scores, prepared = self.levels.scores(model, volume, modality, device)
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
                extra: Mapping[str, Any]) -> RecordOutput:
        modality = accepted_modality(volume, self.settings["modalities"])
        found = self.centroids(model, volume, modality, device)
        record = centroid_list(found, volume.affine)
        return RecordOutput(record, points=[e for e in record if "label" in e],
                            caption=f"{len(found)} vertebrae")

    def score_image(self, model: nn.Module, manifest: Manifest, row: dict[str, str],
                    device: torch.device) -> ImageScore:
        image = load_image(manifest.path(row))
        counts = identification(self.centroids(model, image, row["modality"], device),
                                self.truth(manifest, row, image), self.settings["radius"])
        return ImageScore({**counts, **rates(counts)})

    def summarise(self, scores: list[ImageScore]) -> dict[str, float]:
        return pool([s.metrics for s in scores])

    def metric_names(self) -> tuple[str, ...]:
        return ("id_rate", "localisation_mm")

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "format": "VerSe centroid list: a direction entry, then "
                "label (VerSe value) and X, Y, Z in voxel coordinates of the input",
                "labels": {v: self.levels.table.names[i]
                           for i, v in enumerate(self.levels.table.values) if v}}

    def bundle_configs(self) -> dict[str, dict[str, Any]]:
        raise without_bundle(self.name, "vertebra centroids")
