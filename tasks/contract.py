"""The contract every spine task follows, so that training, federation and
benchmarks stay generic: nothing outside ``tasks/<name>/`` names a task.

A task is built from its validated settings (its ``[task]`` config keys), and
knows how to build its network, its training data from a manifest, the loss of
one batch (the loop is the one local trainer's, ``client.trainer``), how to
score one image and pool those scores into its metrics (the loop over images is
``tasks.evaluation``'s), and prediction on one image (an ``Output`` that writes
itself: a mask, a centroid list, grades, angles), with the extra inputs it
declares. Everything it needs to rebuild itself is in ``settings``, which a
checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.blocks.cache import PreparedCache
from tasks.config import Key
from tasks.errors import UserError
from tasks.imageio import Volume
from tasks.manifest import Manifest


@dataclass(frozen=True)
class PatientDraws:
    """How training data are drawn for patient-level DP: one item per patient, holding
    ``slices`` of their samples (slices or patches) drawn at random, each augmented
    ``augmentations`` times, stacked on a leading axis of ``size`` = slices x
    augmentations. DP-SGD averages the item's gradients and clips the mean once."""

    slices: int = 1
    augmentations: int = 1

    @property
    def size(self) -> int:
        return self.slices * self.augmentations


@dataclass
class ImageScore:
    """One evaluated image: its row of the per-image table, and what the task pools over
    images into its metrics (counts, every disc's probabilities, angles)."""

    metrics: dict[str, Any]
    detail: Any = None


@dataclass
class Evaluation:
    """Metrics averaged over the evaluated images, plus one row of metrics per image."""

    metrics: dict[str, float]
    per_image: pd.DataFrame = field(default_factory=pd.DataFrame)


def accepted_modality(volume: Volume, modalities: list[str]) -> str:
    """The volume's modality, refused (one line) unless the model was trained on it."""
    if volume.modality not in modalities:
        raise UserError(f"modality {volume.modality!r} is not one this model was trained on "
                        f"({', '.join(modalities)})")
    return volume.modality


def without_bundle(task: str, outputs: str) -> UserError:
    """Why a task's model has no MONAI bundle: its outputs are decoded by spinefl's code."""
    return UserError(f"a {task} model has no MONAI bundle: its {outputs} are decoded from the "
                     "network's scores by spinefl's own code, which a bundle's MONAI steps "
                     "cannot express (run it with `spinefl predict`)")


class Output(Protocol):
    """A task's prediction for one image."""

    def save(self, path: Path) -> None:
        """Write the prediction to ``path`` (named with the task's ``output_suffix``)."""
        ...


class Task(Protocol):
    """A spine task: model, data, loss, metrics and prediction behind one interface."""

    name: ClassVar[str]
    keys: ClassVar[tuple[Key, ...]]
    score: ClassVar[str]  # the evaluation metric that ranks models (higher is better)
    output_suffix: ClassVar[str]  # what a prediction's file name ends with, e.g. '_pred.nii.gz'
    # Extra inputs prediction takes per image, by name, with the suffix of the JSON file that
    # holds each beside the image's stem (e.g. {"centroids": "_ctd.json"}); usually empty.
    inputs: ClassVar[dict[str, str]]
    # Parts of the network DP-SGD may train alone (``privacy.trainable``), by name, each a
    # regular expression matched against parameter names (e.g. {"head": r"^class_layers\."}).
    parts: ClassVar[dict[str, str]]
    settings: dict[str, Any]

    def __init__(self, settings: Mapping[str, Any]) -> None: ...

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model reads (what ``predict`` assumes when an image's file
        does not say and only one is possible)."""
        ...

    def select(self, manifest: Manifest) -> Manifest:
        """The manifest rows this task can use (e.g. its modalities, rows with labels)."""
        ...

    def build_model(self) -> nn.Module:
        """A freshly initialised network; it returns logits."""
        ...

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: PatientDraws | None = None,
                   cache: PreparedCache | None = None) -> DataLoader:
        """A loader of training batches (one pass = one local epoch); ``len(loader.dataset)``
        is the number of training samples a hospital reports. With ``per_patient`` the
        dataset has one item per patient, each access drawing that many of the patient's
        samples at random, every tensor of the item stacked (per_patient.size, ...)
        (what patient-level DP-SGD needs: see ``client.privacy``). With ``cache`` the prepared
        rows are read from disk where it holds them and stored there otherwise."""
        ...

    def batch_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """The loss of one training batch (a scalar; under mixed precision on CUDA)."""
        ...

    def metric_names(self) -> tuple[str, ...]:
        """The keys ``summarise`` always returns (NaN where a metric is undefined)."""
        ...

    def score_image(self, model: nn.Module, manifest: Manifest, row: dict[str, str],
                    device: torch.device) -> ImageScore | None:
        """One row's image scored as predict would see it (None: nothing to score in it)."""
        ...

    def summarise(self, scores: list[ImageScore]) -> dict[str, float]:
        """The task's metrics over scored images (pooled or averaged as the metric defines)."""
        ...

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                extra: Mapping[str, Any]) -> Output:
        """The task's output for one image (masks keep the input's geometry; points are in its
        voxel coordinates). ``extra``: the image's declared ``inputs`` that were found, by
        name (e.g. its VerSe-style vertebra centroids for disc grading)."""
        ...

    def describe_output(self) -> dict[str, Any]:
        """What predicted values mean (e.g. the label map), written beside predictions."""
        ...

    def bundle_configs(self) -> dict[str, dict[str, Any]]:
        """A MONAI bundle's configs (``configs/<name>``: ``inference.json`` first) that give
        ``predict``'s outputs with MONAI alone; ``without_bundle``'s error where they cannot."""
        ...
