"""`spinefl predict` as a user runs it: geometry kept, Dice as evaluated, bad inputs reported."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.checkpoint import load_checkpoint
from tasks.evaluation import evaluate
from tasks.imageio import load_image
from tasks.segmentation.metric import segmentation_metrics
from tests.helpers.cli import spinefl
from tests.helpers.dicom_series import write_series

pytestmark = pytest.mark.slow


def folder_digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_predict_keeps_geometry_and_matches_evaluation(trained_run, tmp_path, modality):
    manifest, result = trained_run
    task, model, _ = load_checkpoint(result.folder / "model.pt")
    held_out = manifest.select(split="test", modality=modality)
    evaluation = evaluate(task, model, held_out, torch.device("cpu"))
    for row in held_out.rows():
        out = tmp_path / row["series_id"]
        done = spinefl("predict", "--model", str(result.folder / "model.pt"), "--input",
                       str(manifest.path(row)), "--out", str(out), "--modality", modality)
        assert done.returncode == 0, done.stderr
        predicted = load_image(next(out.glob("*_pred.nii.gz")))
        source = load_image(manifest.path(row))
        assert predicted.array.shape == source.array.shape
        np.testing.assert_allclose(predicted.affine, source.affine, atol=1e-5)
        truth = task.table.to_classes(load_image(manifest.path(row, "mask")).array)
        dice = segmentation_metrics(task.table.from_values(predicted.array), truth, task.table,
                                    source.spacing)["dice_mean"]
        expected = evaluation.per_image.set_index("image").loc[row["image"], "dice_mean"]
        assert dice == pytest.approx(expected, abs=1e-6)


def test_predict_reads_a_dicom_series(trained_run, tmp_path):
    manifest, result = trained_run
    row = manifest.select(split="test", modality="CT").rows()[0]
    source = load_image(manifest.path(row))
    write_series(source, tmp_path / "dicom")
    done = spinefl("predict", "--model", str(result.folder / "model.pt"), "--input",
                   str(tmp_path / "dicom"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    predicted = load_image(next((tmp_path / "out").glob("series-*_pred.nii.gz")))
    np.testing.assert_allclose(predicted.affine, source.affine, atol=1e-4)
    task, _, _ = load_checkpoint(result.folder / "model.pt")
    truth = task.table.to_classes(load_image(manifest.path(row, "mask")).array)
    dice = segmentation_metrics(task.table.from_values(predicted.array), truth, task.table,
                                source.spacing)["dice_mean"]
    assert dice >= 0.7


def test_a_bad_file_in_a_batch_is_reported_and_the_rest_goes_on(trained_run, tmp_path):
    manifest, result = trained_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for row in manifest.select(split="test", modality="CT").rows():
        (inputs / f"{row['patient_id']}.nii.gz").write_bytes(manifest.path(row).read_bytes())
    (inputs / "truncated.nii.gz").write_bytes(b"\x1f\x8b broken")
    before = folder_digest(inputs)
    done = spinefl("predict", "--model", str(result.folder / "model.pt"), "--input", str(inputs),
                   "--out", str(tmp_path / "out"), "--modality", "CT")
    assert done.returncode == 1, done.stderr  # some input failed: documented status 1
    report = pd.read_csv(tmp_path / "out" / "predictions.csv").fillna("")
    failed = report[report.status == "failed"]
    assert len(failed) == 1 and "truncated.nii.gz" in failed.reason.iloc[0]
    assert (report.status == "written").sum() == len(list(inputs.glob("P*.nii.gz")))
    assert folder_digest(inputs) == before
    again = spinefl("predict", "--model", str(result.folder / "model.pt"), "--input", str(inputs),
                    "--out", str(tmp_path / "out"), "--modality", "CT")
    assert "skipped" in set(pd.read_csv(tmp_path / "out" / "predictions.csv").status)
    assert again.returncode == 1


def test_grading_predictions_take_the_centroids_a_labelling_model_writes(tiny_cohort, tmp_path):
    """`spinefl predict` chains the tasks: a centroid folder (what labelling writes) gives the
    grading model its disc levels; an image without centroids is reported, the rest written."""
    import json
    import shutil

    from tasks.checkpoint import save_checkpoint
    from tests.helpers.task_defaults import default_task

    task = default_task("grading")
    save_checkpoint(tmp_path / "grading.pt", task, task.build_model(), epoch=0)
    images, centroids = tmp_path / "images", tmp_path / "ctd"
    images.mkdir()
    centroids.mkdir()
    rows = tiny_cohort.select(modality="CT").rows()[:2]
    for row in rows:
        shutil.copy(tiny_cohort.path(row), images / f"{row['patient_id']}.nii.gz")
    first = rows[0]["patient_id"]
    shutil.copy(tiny_cohort.path(rows[0], "centroids"), centroids / f"{first}_ctd.json")
    done = spinefl("predict", "--model", str(tmp_path / "grading.pt"), "--input", str(images),
                   "--centroids", str(centroids), "--modality", "CT", "--out",
                   str(tmp_path / "out"), "--qc")
    assert done.returncode == 1, done.stderr  # one input failed (no centroids for it)
    report = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    status = dict(zip(report.input.map(lambda p: p.split("/")[-1]), report.status, strict=True))
    assert status == {f"{rows[0]['patient_id']}.nii.gz": "written",
                      f"{rows[1]['patient_id']}.nii.gz": "failed"}
    assert "--centroids" in report[report.status == "failed"].reason.iloc[0]
    grades = json.loads((tmp_path / "out" / f"{rows[0]['patient_id']}_grades.json").read_text())
    assert "l4_l5" in grades and 1 <= grades["l4_l5"]["pfirrmann"] <= 5
    assert sum(grades["l4_l5"]["pfirrmann_probabilities"]) == pytest.approx(1, abs=1e-3)
    # --qc: the graded discs drawn over the image that was written, nothing for the failure
    assert [p.name for p in (tmp_path / "out").glob("*_qc.png")] == [f"{first}_qc.png"]


def test_evaluate_scores_what_training_scored(trained_run, tmp_path):
    """`spinefl evaluate` on the validation split gives the metrics and per-image rows the
    training run recorded for its best model: one evaluation, inside and outside training."""
    manifest, result = trained_run
    done = spinefl("evaluate", "--model", str(result.folder / "model.pt"), "--manifest",
                   str(manifest.root / "manifest.csv"), "--split", "val", "--out",
                   str(tmp_path / "val"))
    assert done.returncode == 0, done.stderr
    _, _, payload = load_checkpoint(result.folder / "model.pt")
    metrics = pd.read_csv(tmp_path / "val" / "metrics.csv").iloc[0]
    for name, value in payload["metrics"].items():
        assert metrics[name] == pytest.approx(value, abs=1e-5), name
    recorded = pd.read_csv(result.folder / "val_per_image.csv").drop(columns="seconds")
    scored = pd.read_csv(tmp_path / "val" / "per_image.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(scored, recorded, atol=1e-5)
