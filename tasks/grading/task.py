"""The disc grading task: per disc level, Pfirrmann-like degeneration (1-5) and spinal canal
stenosis as RSNA 2024 grades it (normal/mild, moderate, severe), from sagittal crops."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.agreement import accuracy, quadratic_kappa
from tasks.blocks.cache import PreparedCache
from tasks.blocks.crops import (
    CLASSIFIER_PARTS,
    Crop,
    crop_loader,
    crop_logits,
    labelled_rows,
    sagittal_crops,
)
from tasks.config import Key
from tasks.contract import ImageScore, PatientDraws, accepted_modality, without_bundle
from tasks.errors import UserError
from tasks.grading.config import KEYS
from tasks.grading.dataset import prepare_discs, row_discs
from tasks.grading.discs import centres_from_centroids
from tasks.grading.loss import SEVERITY_WEIGHTS, grading_loss
from tasks.grading.metric import any_severe_log_loss, weighted_log_loss
from tasks.grading.model import GRADES, SEVERITIES, build_network
from tasks.imageio import Volume
from tasks.manifest import Manifest
from tasks.outputs import Finding, RecordOutput
from tasks.points import to_voxels

SEVERITY_NAMES = ("normal/mild", "moderate", "severe")


class GradingTask:
    """Grade every disc level: degeneration 1-5 and canal stenosis, with a MONAI DenseNet."""

    name: ClassVar[str] = "grading"
    keys: ClassVar[tuple[Key, ...]] = KEYS
    score: ClassVar[str] = "pfirrmann_kappa"
    output_suffix: ClassVar[str] = "_grades.json"
    inputs: ClassVar[dict[str, str]] = {"centroids": "_ctd.json"}
    parts: ClassVar[dict[str, str]] = CLASSIFIER_PARTS

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.settings["modalities"])

    def select(self, manifest: Manifest) -> Manifest:
        """Rows of the task's modalities with disc positions (centroids, mask or keypoints)
        and at least one Pfirrmann or canal stenosis label."""
        return labelled_rows(manifest, self.settings["modalities"],
                             ("pfirrmann_", "spinal_canal_stenosis_"))

    def build_model(self) -> nn.Module:
        return build_network(self.settings)

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        rows = self.select(manifest)
        return crop_loader(prepare_discs(rows, self.settings, cache), self.settings,
                           batch_size, seed, list(rows.table.patient_id), per_patient)

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
                   device: torch.device) -> torch.Tensor:
        logits = model(batch["image"].to(device))
        labels = batch["labels"].to(device)
        return grading_loss(logits.float(), labels[:, 0], labels[:, 1])

    def probabilities(self, model: nn.Module, images: torch.Tensor, device: torch.device
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 5) Pfirrmann and (N, 3) stenosis probabilities of (N, 3, H, W) crops."""
        logits = crop_logits(model, images, device)
        return (torch.softmax(logits[:, :GRADES], 1).numpy(),
                torch.softmax(logits[:, GRADES:], 1).numpy())

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                extra: Mapping[str, Any]) -> RecordOutput:
        accepted_modality(volume, self.settings["modalities"])
        centroids = extra.get("centroids")
        if not centroids:
            raise UserError("disc grading needs the image's vertebra centroids: pass "
                            "--centroids with a <stem>_ctd.json for it (e.g. from a "
                            "labelling model)")
        centres = centres_from_centroids(centroids, volume.affine)
        if not centres:
            raise UserError("the centroids hold no two neighbouring vertebrae T12-S")
        found = sagittal_crops(volume, volume.modality, centres, self.settings)
        grades, severities = self.probabilities(model, torch.stack(list(found.values())),
                                                device)
        record = {}
        for i, level in enumerate(found):
            x, y, z = to_voxels(centres[level][None], volume.affine)[0]
            record[level] = {
                "X": round(float(x), 2), "Y": round(float(y), 2), "Z": round(float(z), 2),
                "pfirrmann": int(grades[i].argmax()) + 1,
                "pfirrmann_probabilities": [round(float(p), 4) for p in grades[i]],
                "spinal_canal_stenosis": SEVERITY_NAMES[int(severities[i].argmax())],
                "spinal_canal_stenosis_probabilities": [round(float(p), 4)
                                                        for p in severities[i]]}
        return RecordOutput(record, points=[
            {"X": v["X"], "Y": v["Y"], "Z": v["Z"], "label": f"{level} P{v['pfirrmann']}"}
            for level, v in record.items()], caption="Pfirrmann grade per disc", findings=[
            Finding(level.upper().replace("_", "/"),  # l4_l5: the convention's L4/L5
                    measurements=(("Pfirrmann grade", v["pfirrmann"], "{grade}"),),
                    evaluations=(("Spinal canal stenosis", v["spinal_canal_stenosis"]),))
            for level, v in record.items()])

    def score_image(self, model: nn.Module, manifest: Manifest, row: dict[str, str],
                    device: torch.device) -> ImageScore | None:
        found: list[Crop] = row_discs(manifest, row, self.settings)
        if not found:
            return None
        grades, severities = self.probabilities(model, torch.stack([d.image for d in found]),
                                                device)
        discs = [{"study": row["study_id"], "grade": d.labels[0], "severity": d.labels[1],
                  "grade_p": g, "severity_p": s}
                 for d, g, s in zip(found, grades, severities, strict=True)]
        known = [(d.labels[0], int(g.argmax())) for d, g in zip(found, grades, strict=True)
                 if d.labels[0] >= 0]
        accuracy_ = float(np.mean([t == p for t, p in known])) if known else float("nan")
        return ImageScore({"discs": len(found), "pfirrmann_accuracy": accuracy_}, discs)

    def summarise(self, scores: list[ImageScore]) -> dict[str, float]:
        return self._metrics([disc for s in scores for disc in s.detail])

    def _metrics(self, discs: list[dict[str, Any]]) -> dict[str, float]:
        metrics = dict.fromkeys(self.metric_names(), float("nan"))
        graded = [d for d in discs if d["grade"] >= 0]
        if graded:
            truth = np.array([d["grade"] for d in graded])
            predicted = np.array([d["grade_p"].argmax() for d in graded])
            metrics["pfirrmann_accuracy"] = accuracy(predicted, truth)
            metrics["pfirrmann_kappa"] = quadratic_kappa(predicted, truth, GRADES)
            metrics["pfirrmann_majority"] = float(np.bincount(truth).max() / len(truth))
        stenosis = [d for d in discs if d["severity"] >= 0]
        if stenosis:
            truth = np.array([d["severity"] for d in stenosis])
            probabilities = np.array([d["severity_p"] for d in stenosis])
            metrics["stenosis_accuracy"] = accuracy(probabilities.argmax(1), truth)
            metrics["stenosis_kappa"] = quadratic_kappa(probabilities.argmax(1), truth,
                                                        SEVERITIES)
            metrics["stenosis_log_loss"] = weighted_log_loss(probabilities, truth,
                                                             SEVERITY_WEIGHTS)
            metrics["stenosis_any_severe_log_loss"] = any_severe_log_loss(
                probabilities[:, 2], np.array([d["study"] for d in stenosis]), truth)
            metrics["stenosis_majority"] = float(np.bincount(truth).max() / len(truth))
        return metrics

    def metric_names(self) -> tuple[str, ...]:
        return ("pfirrmann_kappa", "pfirrmann_accuracy", "pfirrmann_majority",
                "stenosis_accuracy", "stenosis_kappa", "stenosis_log_loss",
                "stenosis_any_severe_log_loss", "stenosis_majority")

    def describe_output(self) -> dict[str, Any]:
        return {"task": self.name, "format": "per disc level (t12_l1 ... l5_s1): its centre "
                "X, Y, Z in voxel coordinates of the input, the Pfirrmann grade 1-5 and the "
                "spinal canal stenosis (normal/mild, moderate, severe), each with its "
                "probabilities"}

    def bundle_configs(self) -> dict[str, dict[str, Any]]:
        raise without_bundle(self.name, "disc grades")
