"""The segmentation task beyond its default: radiographs (2D) and a 3D U-Net with level classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.trainer import LocalTrainer
from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from tasks.config import validate
from tasks.imageio import load_image
from tasks.segmentation import SegmentationTask


def task_with(**settings) -> SegmentationTask:
    return SegmentationTask(validate({"task": settings}, {"task": SegmentationTask.keys},
                                     "test")["task"])


@pytest.fixture(scope="module")
def xray_cohort(tmp_path_factory):
    config = cohort_config({"cohort": {"patients": 3, "seed": 4}, "scanner": [
        {"name": "xr", "modality": "XR", "spacing": [2.0, 2.0, 2.0], "fov": 120.0,
         "noise": 0.02}]}, "xray cohort")
    return generate(config, tmp_path_factory.mktemp("xray"))


def fit(task: SegmentationTask, manifest, steps: int, batch_size: int
        ) -> tuple[float, float, torch.nn.Module]:
    torch.manual_seed(0)
    model = task.build_model()
    batches = task.train_data(manifest, batch_size=batch_size, seed=0)
    trainer = LocalTrainer(task, model, {"lr": 3e-3, "schedule": "constant",
                                         "weight_decay": 0.0}, torch.device("cpu"),
                           run_epochs=steps)
    first = trainer.fit(batches, 1, max_steps=2).loss
    last = trainer.fit(batches, steps, max_steps=steps)
    return first, last.loss, model


def test_radiographs_train_and_predict_on_their_own_grid(xray_cohort):
    task = task_with(modalities=["XR"], spacing=[2.0, 2.0, 2.0], channels=[8, 16, 32],
                     patch_size=[64, 64, 64])
    assert set(task.select(xray_cohort).table.view) == {"AP", "LAT"}
    first, last, model = fit(task, xray_cohort, steps=30, batch_size=2)
    assert last < first
    row = xray_cohort.rows()[0]
    image = load_image(xray_cohort.path(row))
    image.modality = "XR"
    predicted = task.predict(model, image, torch.device("cpu"), {}).volume
    assert predicted.array.shape == image.array.shape and predicted.array.ndim == 2
    np.testing.assert_array_equal(predicted.affine, image.affine)


def test_unet3d_with_level_classes_trains_and_predicts_with_sliding_windows(tiny_cohort):
    task = task_with(network="unet3d", labels="levels", channels=[8, 16, 32],
                     spacing=[4.0, 4.0, 4.0], patch_size=[32, 32, 32])
    assert task.table.count == 15
    train = task.select(tiny_cohort.select(split="train"))
    assert "XR" not in set(train.table.modality)
    first, last, model = fit(task, train, steps=12, batch_size=2)
    assert last < first
    row = task.select(tiny_cohort.select(split="test")).rows()[0]
    image = load_image(tiny_cohort.path(row))
    image.modality = row["modality"]
    predicted = task.predict(model, image, torch.device("cpu"), {}).volume
    assert predicted.array.shape == image.array.shape
    np.testing.assert_array_equal(predicted.affine, image.affine)
    assert set(np.unique(predicted.array)) <= set(task.table.values)
