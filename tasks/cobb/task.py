"""The Cobb angle task: a 2D U-Net finds the vertebral bodies of an AP radiograph (trained on
their corner landmarks), each body's endplate tilt is measured from its region, and the
largest angle between two endplates is the Cobb angle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.cache import PreparedCache
from tasks.blocks.dataset import prepare_rows, train_loader
from tasks.blocks.model import UNET_PARTS
from tasks.blocks.segmenter import Segmenter
from tasks.cobb.config import KEYS
from tasks.cobb.geometry import Body, angle_between, bodies, cobb_angle
from tasks.cobb.landmarks import BODY, corner_target
from tasks.cobb.metric import circular_mae, smape
from tasks.config import Key
from tasks.contract import ImageScore, PatientDraws, without_bundle
from tasks.errors import UserError
from tasks.imageio import Volume, load_image
from tasks.manifest import Manifest
from tasks.outputs import Finding, RecordOutput
from tasks.points import to_voxels


class CobbTask:
    """Measure the Cobb angle of an AP radiograph from its vertebral bodies' endplates."""

    name: ClassVar[str] = "cobb"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "cobb_within"
    output_suffix: ClassVar[str] = "_cobb.json"
    inputs: ClassVar[dict[str, str]] = {}
    parts: ClassVar[dict[str, str]] = UNET_PARTS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.segmenter = Segmenter({**self.settings, "network": "unet2d", "modalities": ["XR"],
                                    "labels": "structures", "ct_window": [0.0, 1.0]})

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("XR",)

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
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        rows = self.select(manifest)
        prepared = prepare_rows(rows, self.segmenter.settings, BODY, corner_target,
                                cache=cache)
        return train_loader(prepared, self.segmenter.settings, batch_size, seed,
                            list(rows.table.patient_id), per_patient)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
                   device: torch.device) -> torch.Tensor:
        return self.segmenter.batch_loss(model, batch, device)

    def measure(self, model: nn.Module, volume: Volume, device: torch.device
                ) -> tuple[list[Body], np.ndarray]:
        """The bodies found (mm of the network grid) and that grid's index -> world affine."""
        if not volume.is_projection:
            raise UserError("the Cobb task takes 2D radiographs (AP view)")
        scores, prepared = self.segmenter.scores(model, volume, "XR", device)
        spacing = tuple(float(np.linalg.norm(prepared.affine[:3, i])) for i in range(2))
        found = bodies(scores.argmax(0).numpy() == 1, spacing, self.settings["min_area"])
        return found, prepared.affine @ np.diag([1 / spacing[0], 1 / spacing[1], 1.0, 1.0])

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                extra: Mapping[str, Any]) -> RecordOutput:
        found, affine = self.measure(model, volume, device)

        def pixels(points: np.ndarray) -> list[list[float]]:
            world = (affine @ np.c_[points, np.zeros(len(points)), np.ones(len(points))].T).T
            return [[round(float(x), 2), round(float(y), 2)]
                    for x, y, _ in to_voxels(world[:, :3], volume.affine)]

        tilts = [body.tilt for body in found]
        angle = round(cobb_angle(tilts), 2)
        corners = [{"X": x, "Y": y, "label": ""} for body in found
                   for x, y in pixels(body.corners)]
        return RecordOutput({
            "cobb_angle": angle,
            "vertebrae": [{"centre": pixels(body.centre[None])[0], "tilt": round(body.tilt, 2),
                           "corners": pixels(body.corners)} for body in found]},
            points=corners, caption=f"Cobb angle {angle:g} degrees",
            findings=[Finding("spine", measurements=(("Cobb angle", angle, "deg"),))])

    def score_image(self, model: nn.Module, manifest: Manifest, row: dict[str, str],
                    device: torch.device) -> ImageScore:
        found, _ = self.measure(model, load_image(manifest.path(row)), device)
        predicted, truth = cobb_angle([b.tilt for b in found]), float(row["cobb_angle"])
        error = angle_between(predicted, truth)
        return ImageScore({"cobb_true": truth, "cobb_predicted": predicted, "cobb_error": error,
                           "cobb_within": float(error <= self.settings["tolerance"]),
                           "vertebrae": len(found)})

    def summarise(self, scores: list[ImageScore]) -> dict[str, float]:
        predicted = np.array([s.metrics["cobb_predicted"] for s in scores])
        truth = np.array([s.metrics["cobb_true"] for s in scores])
        return {"cobb_within": float(np.mean([s.metrics["cobb_within"] for s in scores])),
                "cobb_mae": circular_mae(predicted, truth),
                "cobb_smape": smape(predicted[:, None], truth[:, None])}

    def metric_names(self) -> tuple[str, ...]:
        return ("cobb_within", "cobb_mae", "cobb_smape")

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "format": "cobb_angle (degrees, the largest angle between "
                "two endplates) and, per vertebral body top to bottom, its centre, endplate "
                "tilt (degrees) and four corners in pixel coordinates (X, Y) of the input"}

    def bundle_configs(self) -> dict[str, dict[str, Any]]:
        raise without_bundle(self.name, "Cobb angles")
