"""The contract every spine task follows, so that training, federation and
benchmarks stay generic: nothing outside ``tasks/<name>/`` names a task.

A task is built from its validated settings (its ``[task]`` config keys), and
knows how to build its network, its training data from a manifest, one pass
of local training, evaluation to a flat dict of metrics, and prediction on one
image (an ``Output`` that writes itself: a mask, a centroid list, grades, angles).
Everything it needs to rebuild itself is in ``settings``, which a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks.config import Key
from tasks.errors import UserError
from tasks.imageio import Volume
from tasks.manifest import Manifest


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
    settings: dict[str, Any]

    def __init__(self, settings: Mapping[str, Any]) -> None: ...

    def select(self, manifest: Manifest) -> Manifest:
        """The manifest rows this task can use (e.g. its modalities, rows with labels)."""
        ...

    def build_model(self) -> nn.Module:
        """A freshly initialised network; it returns logits."""
        ...

    def train_data(self, manifest: Manifest, batch_size: int, seed: int,
                   per_patient: bool = False) -> DataLoader:
        """A loader of training batches (one pass = one local epoch); ``len(loader.dataset)``
        is the number of training samples a hospital reports. With ``per_patient`` the
        dataset has one item per patient, each access drawing one of that patient's samples
        at random (what patient-level DP-SGD needs: see ``tasks.privacy``)."""
        ...

    def train_epoch(self, model: nn.Module, batches: Iterable[Any],
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    max_steps: int | None = None,
                    penalty: Callable[[nn.Module], torch.Tensor] | None = None
                    ) -> dict[str, float]:
        """One pass of local training (at most ``max_steps`` steps), adding ``penalty(model)``
        to each step's loss when given (e.g. FedProx); returns e.g. the mean loss."""
        ...

    def metric_names(self) -> tuple[str, ...]:
        """The keys ``evaluate`` always returns (NaN where a metric is undefined)."""
        ...

    def evaluate(self, model: nn.Module, manifest: Manifest, device: torch.device) -> Evaluation:
        """Metrics on every row of ``manifest``, as predict would produce them."""
        ...

    def predict(self, model: nn.Module, volume: Volume, device: torch.device,
                centroids: list[dict[str, Any]] | None = None) -> Output:
        """The task's output for one image (masks keep the input's geometry; points are in its
        voxel coordinates). ``centroids``: the image's VerSe-style vertebra centroids, for tasks
        that work per level (disc grading); other tasks ignore them."""
        ...

    def describe_output(self) -> dict[str, Any]:
        """What predicted values mean (e.g. the label map), written beside predictions."""
        ...
