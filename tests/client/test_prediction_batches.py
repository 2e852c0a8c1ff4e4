"""`spinefl predict` on folders as a user's data come: trees, masks beside images, repeated
batches, odd shapes and checkpoints (an untrained model: what is tested is the batch)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from tasks.checkpoint import FORMAT, save_checkpoint
from tasks.errors import UserError
from tasks.imageio import Volume, save_nifti
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.task_defaults import default_task, untrained_segmentation


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return untrained_segmentation(tmp_path_factory.mktemp("model"))


@pytest.fixture
def phantom_tree(tiny_cohort, tmp_path):
    """The phantom layout as a user keeps it: P0001/ct.nii.gz beside ct_mask.nii.gz and
    ct_ctd.json, one folder per patient, the same file names in each (two patients)."""
    tree = tmp_path / "images"
    for patient in ("P0001", "P0003"):
        shutil.copytree(tiny_cohort.root / patient, tree / patient)
    return tree


def predict(model, source, out, *extra):
    return spinefl("predict", "--model", str(model), "--input", str(source), "--out", str(out),
                   *extra)


@pytest.mark.slow  # a real `spinefl predict` run
def test_qc_pictures_are_written_beside_the_predictions(model, phantom_tree, tmp_path):
    out = tmp_path / "out"
    done = predict(model, phantom_tree, out, "--qc")
    assert done.returncode == 0, done.stdout + done.stderr
    predictions = sorted(out.rglob("*_pred.nii.gz"))
    pictures = sorted(out.rglob("*_qc.png"))
    assert [p.name.replace("_pred.nii.gz", "") for p in predictions] == \
        [p.name.replace("_qc.png", "") for p in pictures]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)


def test_outputs_mirror_the_tree_and_masks_are_reported_not_predicted(model, phantom_tree,
                                                                      tmp_path):
    out = tmp_path / "out"
    done = predict(model, phantom_tree, out)
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_pred.nii.gz"))
    names = sorted(p.relative_to(phantom_tree).parent.as_posix() + "/"
                   + p.name.replace(".nii.gz", "_pred.nii.gz")
                   for p in phantom_tree.rglob("*.nii.gz") if "_mask" not in p.name)
    assert written == names and len(written) == 2  # same file name, two patients: both
    report = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    masks = report[report.input.str.contains("_mask")]
    assert len(masks) == 2 and set(masks.status) == {"skipped"}
    assert masks.reason.str.contains("mask").all()
    # The modality came from the file names (ct.nii.gz, t2.nii.gz), no --modality needed.
    assert set(report[~report.input.str.contains("_mask")].status) == {"written"}


@pytest.mark.slow  # three and four real `spinefl predict` runs
def test_a_second_batch_adds_to_the_report_and_a_failing_input_sets_the_status(
        model, phantom_tree, tmp_path):
    out = tmp_path / "out"
    assert predict(model, phantom_tree / "P0001", out).returncode == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "P0099_ct.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    done = predict(model, broken, out)
    assert done.returncode == 1, done.stderr  # documented: some input failed
    report = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert {"written", "failed"} <= set(report.status), "the first batch's rows were kept"
    everything_failed = predict(model, broken, tmp_path / "other")
    assert everything_failed.returncode == 1


def test_the_output_is_never_inside_the_input(model, phantom_tree):
    from client.prediction import predict as run_prediction

    before = sorted(p.name for p in phantom_tree.rglob("*"))
    for out in (phantom_tree, phantom_tree / "P0001" / "predictions"):
        with pytest.raises(UserError, match="inside the input folder"):
            run_prediction(model, phantom_tree, out)
    assert sorted(p.name for p in phantom_tree.rglob("*")) == before


def test_an_output_folder_that_is_a_file_is_one_line(model, phantom_tree, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    assert_one_line_error(predict(model, phantom_tree / "P0001", blocker),
                          "exists and is not a folder")


def test_a_one_slice_volume_keeps_its_shape(model, tmp_path):
    volume = Volume(np.random.default_rng(0).normal(0, 100, (40, 40, 1)).astype(np.float32),
                    np.diag([1.0, 1.0, 1.0, 1.0]))
    save_nifti(volume, tmp_path / "in" / "slice_ct.nii.gz")
    done = predict(model, tmp_path / "in" / "slice_ct.nii.gz", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert nib.load(tmp_path / "out" / "slice_ct_pred.nii.gz").shape == (40, 40, 1)


@pytest.mark.parametrize("payload, message", [
    ({"format": FORMAT, "version": 1, "task": "segmentation"}, "no settings, state_dict"),
    ({"format": FORMAT, "version": 99, "task": "segmentation", "settings": {},
      "state_dict": {}}, "checkpoint version 99"),
])
def test_a_damaged_or_future_checkpoint_is_refused_naming_it(payload, message, tmp_path):
    from tasks.checkpoint import load_checkpoint

    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(UserError, match=f"model.pt: .*{message}"):
        load_checkpoint(path)


@pytest.mark.slow  # three and four real `spinefl predict` runs
def test_the_modality_comes_from_the_model_else_the_name_else_is_asked_for(model, tiny_xray,
                                                                          tiny_cohort, tmp_path):
    cobb = default_task("cobb")
    cobb_model = save_checkpoint(tmp_path / "cobb.pt", cobb, cobb.build_model())
    radiograph = tiny_xray.table[tiny_xray.table.modality == "XR"].image.iloc[0]
    (tmp_path / "xr").mkdir()
    shutil.copy(tiny_xray.root / radiograph, tmp_path / "xr" / "radiograph.nii.gz")
    predict(cobb_model, tmp_path / "xr", tmp_path / "cobb-out")
    report = pd.read_csv(tmp_path / "cobb-out" / "predictions.csv", keep_default_na=False)
    assert "modality" not in report.reason.iloc[0], "a Cobb model reads radiographs only"

    (tmp_path / "unnamed").mkdir()
    shutil.copy(tiny_cohort.root / tiny_cohort.table.image.iloc[0],
                tmp_path / "unnamed" / "scan.nii.gz")
    done = predict(model, tmp_path / "unnamed", tmp_path / "seg-out")
    assert done.returncode == 1
    report = pd.read_csv(tmp_path / "seg-out" / "predictions.csv", keep_default_na=False)
    assert "pass --modality (this model takes CT, MR;" in report.reason.iloc[0]
