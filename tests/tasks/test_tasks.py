"""Every registered task meets the contract; segmentation's pieces keep their promises."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from client.trainer import DPSettings, LocalTrainer
from tasks.blocks.classes import class_table
from tasks.blocks.transforms import prepare, restore
from tasks.checkpoint import load_checkpoint, save_checkpoint
from tasks.contract import PatientDraws
from tasks.evaluation import evaluate
from tasks.imageio import Volume, load_image, reorient
from tasks.points import read_points
from tasks.registry import TASKS
from tasks.segmentation.metric import segmentation_metrics
from tests.helpers.task_defaults import default_task

LOCAL = {"lr": 3e-3, "schedule": "constant", "weight_decay": 0.0}


@pytest.fixture
def cohort(request, tiny_cohort, tiny_xray):
    """The tiny cohort that has rows for the task under test (radiographs for Cobb)."""
    task = default_task(request.node.callspec.params["name"])
    return tiny_xray if len(task.select(tiny_xray)) else tiny_cohort


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_trains_on_its_own_data_and_round_trips_a_checkpoint(name, cohort, tmp_path):
    tiny_cohort = cohort
    task = default_task(name)
    torch.manual_seed(0)
    model = task.build_model()
    assert len(task.select(tiny_cohort.select(split="train"))) >= 2
    batches = task.train_data(tiny_cohort.select(split="train"), batch_size=4, seed=0)
    trainer = LocalTrainer(task, model, LOCAL, torch.device("cpu"), run_epochs=5)
    first = trainer.fit(batches, 1, max_steps=3)
    for _ in range(4):
        last = trainer.fit(batches, 1, max_steps=10)
    assert last.loss < first.loss

    save_checkpoint(tmp_path / "model.pt", task, model, epoch=1)
    loaded_task, loaded, payload = load_checkpoint(tmp_path / "model.pt")
    assert loaded_task.settings == task.settings and payload["epoch"] == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

    evaluation = evaluate(loaded_task, loaded, tiny_cohort.select(split="val"),
                          torch.device("cpu"))
    assert task.score in evaluation.metrics
    assert len(evaluation.per_image) == len(loaded_task.select(tiny_cohort.select(split="val")))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_patient_level_items_are_patients_and_take_a_real_dp_step(name, cohort):
    """With per_patient, the loader's items are patients (the DP unit), each holding its
    slices x augmentations samples stacked; every task's network is one Opacus can privatise
    as built, and one DP-SGD step on patients (their samples clipped together) works."""
    from opacus.validators import ModuleValidator

    task = default_task(name)
    train = task.select(cohort.select(split="train"))
    draws = PatientDraws(slices=2, augmentations=2)
    batches = task.train_data(train, batch_size=2, seed=0, per_patient=draws)
    assert len(batches.dataset) == train.table.patient_id.nunique()
    single = task.train_data(train, batch_size=2, seed=0).dataset[0]
    item = batches.dataset[0]
    assert {k: v.shape for k, v in item.items()} == {
        k: (4, *v.shape) for k, v in single.items()}
    model = task.build_model()
    assert ModuleValidator.validate(model, strict=False) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = LocalTrainer(task, model, LOCAL, torch.device("cpu"), run_epochs=1)
    fit = trainer.fit(batches, 1, max_steps=1,
                      dp=DPSettings(1.0, 1.0, "hooks", 1e-5, "rdp", per_patient=draws.size))
    # One DP step was taken and accounted for (Poisson sampling may draw nobody: a noise-only
    # step, which moves the weights too but gives the task no batch).
    assert fit.release is not None and fit.release.steps == 1 and fit.steps <= 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_loss_is_per_sample(name, cohort):
    """Opacus' per-sample gradient of each task's batch loss equals the gradient of that
    sample's loss alone: no sample's loss depends on another's (DP-SGD's clipping bound
    holds only then)."""
    from opacus import GradSampleModule

    task = default_task(name)
    train = task.select(cohort.select(split="train"))
    batch = next(iter(task.train_data(train, batch_size=3, seed=0)))
    torch.manual_seed(0)
    model = task.build_model()
    weights = [p for p in model.parameters() if p.ndim > 1]
    first, last = weights[0], weights[-1]
    private = GradSampleModule(model)
    task.batch_loss(private, batch, torch.device("cpu")).backward()
    per_sample = first.grad_sample.clone(), last.grad_sample.clone()
    private._close()
    for i in range(len(batch["image"])):
        alone = {k: v[i:i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(task.batch_loss(model, alone, torch.device("cpu")),
                                    [first, last])
        # float32 noise of other CPU kernels: within 1% of each tensor's largest element
        for found, expected in zip(per_sample, grads, strict=True):
            torch.testing.assert_close(found[i], expected, rtol=1e-3,
                                       atol=1e-2 * float(expected.abs().max()))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prediction_is_written_in_the_input_geometry(name, cohort, tmp_path):
    """Masks keep the input's shape and affine; point records are in its voxel coordinates."""
    task = default_task(name)
    model = task.build_model()
    for row in task.select(cohort).rows()[:2]:
        volume = load_image(cohort.path(row))
        volume.modality = row["modality"]
        extra = {"centroids": read_points(cohort.path(row, "centroids"))} \
            if row.get("centroids") else {}
        target = tmp_path / f"{row['patient_id']}{task.output_suffix}"
        task.predict(model, volume, torch.device("cpu"), extra).save(target)
        if target.name.endswith(".nii.gz"):
            result = load_image(target)
            assert result.array.shape == volume.array.shape
            np.testing.assert_allclose(result.affine, volume.affine, atol=1e-5)
        else:
            record = json.loads(target.read_text())
            if isinstance(record, list):  # a VerSe centroid list, in the input's axes
                assert record[0] == {"direction": list(nib.aff2axcodes(volume.affine))}
            else:  # grades per disc level, or the Cobb angle and its vertebrae
                assert record


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_prepare_then_restore_returns_the_mask(tiny_cohort, orientation):
    """Class maps sent to network space and back land on the input grid where they were."""
    table = class_table("structures")
    settings = {"spacing": [2.0, 2.0, 2.0], "ct_window": [-250.0, 1250.0]}
    row = tiny_cohort.select(modality="CT").rows()[0]
    image = reorient(load_image(tiny_cohort.path(row)), orientation)
    mask = reorient(load_image(tiny_cohort.path(row, "mask")), orientation)
    prepared = prepare(image, "CT", settings, mask, table.to_classes)
    assert prepared.image.shape[1:] == prepared.classes.shape
    scores = torch.nn.functional.one_hot(prepared.classes, table.count).movedim(-1, 0).float()
    back = restore(scores, prepared)
    truth = table.to_classes(mask.array)
    assert back.shape == truth.shape
    for index in range(1, table.count):
        overlap = 2 * ((back == index) & (truth == index)).sum()
        assert overlap / ((back == index).sum() + (truth == index).sum()) > 0.85


def test_restore_is_exact_when_no_resampling_is_needed():
    table = class_table("structures")
    rng = np.random.default_rng(0)
    mask = Volume(rng.integers(0, 4, (8, 6, 5)).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    lps = reorient(mask, "LPS")
    settings = {"spacing": [2.0, 2.0, 2.0], "ct_window": [-250.0, 1250.0]}
    prepared = prepare(lps, "CT", settings, lps, lambda a: a.astype(np.int64))
    scores = torch.nn.functional.one_hot(prepared.classes, table.count).movedim(-1, 0).float()
    np.testing.assert_array_equal(restore(scores, prepared), lps.array)


def test_class_tables_map_the_label_convention():
    structures = class_table("structures")
    np.testing.assert_array_equal(structures.to_classes(np.array([0, 20, 26, 123, 200, 18])),
                                  [0, 1, 1, 2, 3, 1])
    levels = class_table("levels")
    values = np.array([0, 19, 24, 26, 119, 124, 200])
    np.testing.assert_array_equal(levels.to_values(levels.to_classes(values)), values)
    classes = np.arange(structures.count)
    np.testing.assert_array_equal(structures.from_values(structures.to_values(classes)), classes)
    assert levels.names[levels.to_classes(np.array([123]))[0]] == "L4/L5"


def test_dice_and_hd95_match_hand_computed_values():
    table = class_table("structures")
    truth = np.zeros((20, 20, 20), dtype=np.int64)
    truth[5:15, 5:15, 5:15] = 1  # a 10^3 vertebra cube
    truth[5:15, 5:15, 16:18] = 2  # a 10x10x2 disc slab
    predicted = np.zeros_like(truth)
    predicted[7:17, 5:15, 5:15] = 1  # the cube shifted by 2 voxels along x
    metrics = segmentation_metrics(predicted, truth, table, spacing=(1.5, 1.0, 1.0), hd95=True)
    assert metrics["dice_vertebra"] == pytest.approx(2 * 800 / 2000)
    assert metrics["dice_disc"] == pytest.approx(0.0)
    assert np.isnan(metrics["dice_canal"])  # absent from the truth: no Dice, not a zero
    assert metrics["dice_mean"] == pytest.approx((0.8 + 0.0) / 2)
    shifted_only = segmentation_metrics(predicted, np.where(truth == 2, 0, truth), table,
                                        spacing=(1.5, 1.0, 1.0), hd95=True)
    assert shifted_only["hd95_mean"] == pytest.approx(2 * 1.5)
