"""The fracture task: per vertebra T12-L5, the Genant grade of a compression fracture (0 none,
1 mild, 2 moderate, 3 severe), from sagittal crops around the vertebra's centroid, graded by
the crop classifier (``tasks/blocks/crops.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.cache import PreparedCache
from tasks.blocks.crops import (
    CLASSIFIER_PARTS,
    Crop,
    crop_classifier,
    crop_loader,
    crop_logits,
    labelled_rows,
    sagittal_crops,
)
from tasks.config import Key
from tasks.contract import ImageScore, PatientDraws, accepted_modality, without_bundle
from tasks.errors import UserError
from tasks.fracture.config import KEYS
from tasks.fracture.dataset import centres_from_centroids, prepare_vertebrae, row_vertebrae
from tasks.fracture.loss import fracture_loss
from tasks.fracture.metric import GENANT, METRICS, called_grade, fracture_metrics
from tasks.imageio import Volume
from tasks.manifest import Manifest
from tasks.outputs import Finding, RecordOutput
from tasks.points import to_voxels


class FractureTask:
    """Grade every vertebra T12-L5 for a compression fracture (Genant 0-3) with a DenseNet."""

    name: ClassVar[str] = "fracture"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "fracture_auc"
    output_suffix: ClassVar[str] = "_fractures.json"
    inputs: ClassVar[dict[str, str]] = {"centroids": "_ctd.json"}
    parts: ClassVar[dict[str, str]] = CLASSIFIER_PARTS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.settings["modalities"])

    def select(self, manifest: Manifest) -> Manifest:
        """Rows of the task's modalities with vertebra positions (centroids or a mask) and at
        least one Genant grade."""
        return labelled_rows(manifest, self.settings["modalities"], ("fracture_",),
                             ("centroids", "mask"))

    def build_model(self) -> nn.Module:
        """(B, 3, H, W) sagittal crops to (B, 4) Genant logits."""
        return crop_classifier(self.settings, GENANT)

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        rows = self.select(manifest)
        return crop_loader(prepare_vertebrae(rows, self.settings, cache), self.settings,
                           batch_size, seed, list(rows.table.patient_id), per_patient)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
                   device: torch.device) -> torch.Tensor:
        logits = model(batch["image"].to(device))
        return fracture_loss(logits.float(), batch["labels"].to(device)[:, 0],
                             self.settings["fracture_weight"])

    def probabilities(self, model: nn.Module, images: torch.Tensor, device: torch.device
                      ) -> np.ndarray:
        """(N, 4) Genant probabilities of (N, 3, H, W) crops."""
        return torch.softmax(crop_logits(model, images, device), 1).numpy()

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                extra: Mapping[str, Any]) -> RecordOutput:
        accepted_modality(volume, self.settings["modalities"])
        centroids = extra.get("centroids")
        if not centroids:
            raise UserError("fracture grading needs the image's vertebra centroids: pass "
                            "--centroids with a <stem>_ctd.json for it (e.g. from a "
                            "labelling model)")
        centres = centres_from_centroids(centroids, volume.affine)
        if not centres:
            raise UserError("the centroids hold no vertebra T12-L5")
        found = sagittal_crops(volume, volume.modality, centres, self.settings)
        probabilities = self.probabilities(model, torch.stack(list(found.values())), device)
        grades = called_grade(probabilities)
        record = {}
        for i, level in enumerate(found):
            x, y, z = to_voxels(centres[level][None], volume.affine)[0]
            record[level] = {
                "X": round(float(x), 2), "Y": round(float(y), 2), "Z": round(float(z), 2),
                "genant": int(grades[i]), "fractured": bool(grades[i] >= 1),
                "fracture_probability": round(float(probabilities[i, 1:].sum()), 4),
                "genant_probabilities": [round(float(p), 4) for p in probabilities[i]]}
        fractured = [level.upper() for level, v in record.items() if v["fractured"]]
        return RecordOutput(record, points=[
            {"X": v["X"], "Y": v["Y"], "Z": v["Z"], "label": f"{level.upper()} G{v['genant']}"}
            for level, v in record.items()],
            caption=f"fractured: {', '.join(fractured)}" if fractured else "no fracture",
            findings=[Finding(level.upper(),
                              measurements=(("Genant grade", v["genant"], "{grade}"),))
                      for level, v in record.items()])

    def score_image(self, model: nn.Module, manifest: Manifest, row: dict[str, str],
                    device: torch.device) -> ImageScore | None:
        found: list[Crop] = row_vertebrae(manifest, row, self.settings)
        if not found:
            return None
        probabilities = self.probabilities(model, torch.stack([c.image for c in found]), device)
        vertebrae = [{"patient": row["patient_id"], "grade": c.labels[0], "probabilities": p}
                     for c, p in zip(found, probabilities, strict=True)]
        return ImageScore({"vertebrae": len(found),
                           "fractured": sum(c.labels[0] >= 1 for c in found)}, vertebrae)

    def summarise(self, scores: list[ImageScore]) -> dict[str, float]:
        return fracture_metrics([v for s in scores for v in s.detail])

    def metric_names(self) -> tuple[str, ...]:
        return METRICS

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "format": "per vertebra (t12 ... l5): its centroid X, Y, Z "
                "in voxel coordinates of the input, the Genant grade 0-3 (none, mild, "
                "moderate, severe), whether it is fractured (grade 1 or worse), the "
                "probability of a fracture and of each grade"}

    def bundle_configs(self) -> dict[str, dict[str, Any]]:
        raise without_bundle(self.name, "fracture grades")
