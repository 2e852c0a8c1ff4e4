"""The Cobb angle task: a 2D U-Net finds the vertebral bodies of an AP radiograph (trained on
their corner landmarks), each body's endplate tilt is measured from its region, and the
largest angle between two endplates is the Cobb angle."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.cobb.config import KEYS
from tasks.cobb.geometry import Body, angle_between, bodies, cobb_angle
from tasks.cobb.landmarks import BODY, corner_target
from tasks.cobb.metric import circular_mae, smape
from tasks.config import Key
from tasks.contract import Evaluation
from tasks.errors import UserError
from tasks.imageio import Volume, load_image
from tasks.manifest import Manifest
from tasks.outputs import RecordOutput
from tasks.points import to_voxels
from tasks.segmentation.dataset import prepare_rows, train_loader
from tasks.segmentation.inference import score_image
from tasks.segmentation.task import SegmentationTask
from tasks.segmentation.transforms import prepare


class CobbTask:
    """Measure the Cobb angle of an AP radiograph from its vertebral bodies' endplates."""

    name: ClassVar[str] = "cobb"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "cobb_within"
    output_suffix: ClassVar[str] = "_cobb.json"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.segmenter = SegmentationTask({**self.settings, "network": "unet2d",
                                           "modalities": ["XR"], "labels": "structures",
                                           "ct_window": [0.0, 1.0], "hd95": False})

    def select(self, manifest: Manifest) -> Manifest:
        """AP radiographs with body corners (keypoints) and a Cobb angle."""
        table = manifest.select(modality="XR").table
        for column in ("view", "keypoints", "cobb_angle"):
            if column not in table:
                return Manifest(table.iloc[:0], manifest.root)
        chosen = (table.view == "AP") & (table.keypoints != "") & (table.cobb_angle != "")
        return Manifest(table[chosen].reset_index(drop=True), manifest.root)

    def build_model(self) -> nn.Module:
        return self.segmenter.build_model()

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: bool = False) -> DataLoader:
        rows = self.select(manifest)
        prepared = prepare_rows(rows, self.segmenter.settings, BODY, corner_target)
        patients = list(rows.table.patient_id) if per_patient else None
        return train_loader(prepared, self.segmenter.settings, batch_size, seed, patients)

    def train_epoch(self, model: nn.Module, batches: Iterable[Any],
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    max_steps: int | None = None,
                    penalty: Callable[[nn.Module], torch.Tensor] | None = None
                    ) -> dict[str, float]:
        return self.segmenter.train_epoch(model, batches, optimizer, device, max_steps, penalty)

    def measure(self, model: nn.Module, volume: Volume, device: torch.device
                ) -> tuple[list[Body], np.ndarray]:
        """The bodies found (mm of the network grid) and that grid's index -> world affine."""
        if not volume.is_projection:
            raise UserError("the Cobb task takes 2D radiographs (AP view)")
        prepared = prepare(volume, "XR", self.segmenter.settings)
        scores = score_image(model, prepared.image, 2, self.segmenter.divisor,
                             self.settings["patch_size"][:2], device)
        spacing = tuple(float(np.linalg.norm(prepared.affine[:3, i])) for i in range(2))
        found = bodies(scores.argmax(0).numpy() == 1, spacing, self.settings["min_area"])
        return found, prepared.affine @ np.diag([1 / spacing[0], 1 / spacing[1], 1.0, 1.0])

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                centroids: list[dict[str, Any]] | None = None) -> RecordOutput:
        found, affine = self.measure(model, volume, device)

        def pixels(points: np.ndarray) -> list[list[float]]:
            world = (affine @ np.c_[points, np.zeros(len(points)), np.ones(len(points))].T).T
            return [[round(float(x), 2), round(float(y), 2)]
                    for x, y, _ in to_voxels(world[:, :3], volume.affine)]

        tilts = [body.tilt for body in found]
        return RecordOutput({
            "cobb_angle": round(cobb_angle(tilts), 2),
            "vertebrae": [{"centre": pixels(body.centre[None])[0], "tilt": round(body.tilt, 2),
                           "corners": pixels(body.corners)} for body in found]})

    def evaluate(self, model: nn.Module, manifest: Manifest, device: torch.device) -> Evaluation:
        rows = []
        for row in self.select(manifest).rows():
            start = time.perf_counter()
            found, _ = self.measure(model, load_image(manifest.path(row)), device)
            predicted, truth = cobb_angle([b.tilt for b in found]), float(row["cobb_angle"])
            error = angle_between(predicted, truth)
            rows.append({"patient_id": row["patient_id"], "image": row["image"],
                         "modality": "XR", "site": row["site"], "cobb_true": truth,
                         "cobb_predicted": predicted, "cobb_error": error,
                         "cobb_within": float(error <= self.settings["tolerance"]),
                         "vertebrae": len(found), "seconds": time.perf_counter() - start})
        per_image = pd.DataFrame(rows)
        metrics = dict.fromkeys(self.metric_names(), float("nan"))
        if rows:
            predicted, truth = per_image.cobb_predicted.to_numpy(), per_image.cobb_true.to_numpy()
            metrics.update({"cobb_within": float(per_image.cobb_within.mean()),
                            "cobb_mae": circular_mae(predicted, truth),
                            "cobb_smape": smape(predicted[:, None], truth[:, None])})
        return Evaluation(metrics, per_image)

    def metric_names(self) -> tuple[str, ...]:
        return ("cobb_within", "cobb_mae", "cobb_smape")

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "format": "cobb_angle (degrees, the largest angle between "
                "two endplates) and, per vertebral body top to bottom, its centre, endplate "
                "tilt (degrees) and four corners in pixel coordinates (X, Y) of the input"}
