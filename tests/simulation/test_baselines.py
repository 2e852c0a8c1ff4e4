"""`spinefl manifest export`: the same patients and splits as nnU-Net and MONAI read them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import load_decathlon_datalist

from simulation.baselines import relabelled
from tasks.imageio import load_image
from tasks.manifest import Manifest
from tests.helpers.cli import assert_one_line_error, spinefl

pytestmark = pytest.mark.slow  # real `spinefl manifest export` runs


def _export(manifest, out, *extra):
    return spinefl("manifest", "export", str(manifest), "--out", str(out), *extra)


def test_nnunet_raw_dataset_holds_the_manifests_ct_cases_and_splits(tiny_cohort, tmp_path):
    path = tiny_cohort.root / "manifest.csv"
    done = _export(path, tmp_path, "--format", "nnunet", "--modality", "CT")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "Dataset501_Spine"
    ct = Manifest.load(path).select(modality="CT")
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "vertebra": 1, "disc": 2, "canal": 3}
    training = ct.select(split=("train", "val"))
    assert dataset["numTraining"] == len(training) == len(list((folder / "imagesTr").iterdir()))
    (fold,) = json.loads((folder / "splits_final.json").read_text())
    cases = {c: c.split("-")[0] for c in fold["train"] + fold["val"]}
    assert sorted(cases[c] for c in fold["train"]) == \
        sorted(ct.select(split="train").table.patient_id)
    assert sorted(cases[c] for c in fold["val"]) == sorted(ct.select(split="val").table.patient_id)
    assert len(list((folder / "imagesTs").iterdir())) == len(ct.select(split="test"))
    for row in training.rows():
        case = f"{row['patient_id']}-{row['series_id']}"
        image = folder / "imagesTr" / f"{case}_0000.nii.gz"
        assert image.resolve() == ct.path(row).resolve()  # linked, not copied
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        source = sitk.ReadImage(str(ct.path(row, "mask")))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), relabelled(
            sitk.GetArrayFromImage(source).astype(np.int64), "structures"))
        assert label.GetOrigin() == pytest.approx(source.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2, 3}


def test_a_monai_datalist_loads_with_monai_and_keeps_the_splits(tiny_cohort, tmp_path):
    path = tiny_cohort.root / "manifest.csv"
    done = _export(path, tmp_path, "--format", "monai", "--modality", "MR", "--labels",
                   "vertebrae")
    assert done.returncode == 0, done.stderr
    mr = Manifest.load(path).select(modality="MR")
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        items = load_decathlon_datalist(tmp_path / "datalist.json", data_list_key=key)
        assert sorted(i["patient_id"] for i in items) == \
            sorted(mr.select(split=split).table.patient_id)
        for item in items:
            image = load_image(item["image"])
            if "label" in item:
                label = load_image(item["label"])
                assert label.array.shape == image.array.shape
                assert set(np.unique(label.array)) <= set(range(29))


def test_bad_choices_are_one_line_errors(tiny_cohort, tmp_path):
    path = tiny_cohort.root / "manifest.csv"
    assert_one_line_error(_export(path, tmp_path, "--format", "nnunet"),
                          "holds CT, MR images; choose one with --modality")
    assert_one_line_error(_export(path, tmp_path, "--format", "yolo"), "--format must be")
    assert _export(path, tmp_path, "--format", "monai", "--modality", "CT").returncode == 0
    assert_one_line_error(_export(path, tmp_path, "--format", "monai", "--modality", "CT"),
                          "holds an export", "--force")
