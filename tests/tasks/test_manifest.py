"""The manifest: the one data contract, validated on load with row and column named."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.manifest import Manifest, ManifestError


def write(tiny_cohort, tmp_path, edit) -> str:
    # Absolute paths keep pointing at the cohort's files from the new folder.
    table = edit(tiny_cohort.with_absolute_paths(tmp_path).table)
    path = tmp_path / "manifest.csv"
    table.to_csv(path, index=False)
    return str(path)


def test_a_generated_manifest_is_valid_and_round_trips(tiny_cohort, tmp_path):
    again = Manifest.load(tiny_cohort.root / "manifest.csv")
    assert again.table.equals(tiny_cohort.table)
    assert len(again.select(split="train")) + len(again.select(split=("val", "test"))) == len(
        again)


def test_missing_column_is_named(tiny_cohort, tmp_path):
    path = write(tiny_cohort, tmp_path, lambda t: t.drop(columns=["split"]))
    with pytest.raises(ManifestError, match=r"manifest.csv: missing column 'split'"):
        Manifest.load(path)


def test_bad_path_names_row_and_column(tiny_cohort, tmp_path):
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[2, "image"] = "nowhere/ct.nii.gz"
        return table

    path = write(tiny_cohort, tmp_path, edit)
    with pytest.raises(ManifestError, match=r"row 3 \(patient '.*'\), column 'image': file not "
                                            r"found: .*nowhere/ct.nii.gz"):
        Manifest.load(path)


def test_patient_in_two_splits_is_named(tiny_cohort, tmp_path):
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        twin = table.iloc[[0]].copy()
        twin["split"] = "test" if table.loc[0, "split"] != "test" else "train"
        twin["image"] = table.loc[1, "image"]
        return pd.concat([table.drop(index=1), twin], ignore_index=True)

    path = write(tiny_cohort, tmp_path, edit)
    patient = tiny_cohort.table.loc[0, "patient_id"]
    with pytest.raises(ManifestError, match=f"patient '{patient}' is in more than one split"):
        Manifest.load(path)


def test_unknown_modality_is_named(tiny_cohort, tmp_path):
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, "modality"] = "PET"
        return table

    path = write(tiny_cohort, tmp_path, edit)
    with pytest.raises(ManifestError, match=r"row 1 .*column 'modality': 'PET' is not one of "
                                            r"CT, MR, XR"):
        Manifest.load(path)


def test_every_problem_is_reported_at_once(tiny_cohort, tmp_path):
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, "spacing"] = "1x-1x2"
        table.loc[1, "pfirrmann_l4_l5"] = "7"
        table.loc[2, "fracture_l1"] = "1.5"
        table["comment"] = "x"
        return table

    path = write(tiny_cohort, tmp_path, edit)
    with pytest.raises(ManifestError) as error:
        Manifest.load(path)
    lines = str(error.value).splitlines()
    assert any("unknown column 'comment'" in line for line in lines)
    assert any("row 1" in line and "'spacing'" in line for line in lines)
    assert any("row 2" in line and "'pfirrmann_l4_l5'" in line and "outside [1, 5]" in line
               for line in lines)
    assert any("row 3" in line and "'fracture_l1'" in line and "not a whole grade" in line
               for line in lines)


def test_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        Manifest.load(tmp_path / "absent.csv")


def test_a_path_climbing_out_and_a_mask_that_is_the_image_are_named(tiny_cohort, tmp_path):
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, "keypoints"] = "../../etc/passwd"
        table.loc[1, "mask"] = table.loc[1, "image"]
        return table

    path = write(tiny_cohort, tmp_path, edit)
    with pytest.raises(ManifestError) as raised:
        Manifest.load(path)
    assert "row 1 (patient" in str(raised.value) and "outside the manifest's folder" in str(
        raised.value)
    assert "row 2 (patient" in str(raised.value) and "the image itself" in str(raised.value)


def test_manifest_check_and_train_name_a_mask_of_another_shape(tiny_cohort, tmp_path):
    """A mask whose grid differs from its image's passes the schema but not `manifest check`,
    and `train` names the row and both files before training."""
    import numpy as np

    from tasks.imageio import Volume, save_nifti
    from tests.helpers.cli import assert_one_line_error, run_config, spinefl

    wrong = save_nifti(Volume(np.zeros((5, 6, 7), np.int16), np.eye(4)), tmp_path / "small.nii.gz")

    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[4, "mask"] = str(wrong)
        return table

    path = write(tiny_cohort, tmp_path, edit)
    Manifest.load(path)  # the schema itself holds
    assert_one_line_error(spinefl("manifest", "check", path), "row 5 (patient",
                          "small.nii.gz has shape (5, 6, 7)")
    config = run_config(tmp_path / "run.toml", tmp_path / "manifest.csv", tmp_path / "run")
    assert_one_line_error(spinefl("train", "--config", str(config)), "row 5 (patient",
                          "small.nii.gz")
    assert not (tmp_path / "run").exists()
