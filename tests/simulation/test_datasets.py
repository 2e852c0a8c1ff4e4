"""Public dataset adapters on fixtures in each dataset's exact layout: label mapping, geometry,
splits, sites, points, and every bad case reported while the rest goes on."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from tasks.imageio import load_image
from tasks.manifest import Manifest
from tests.helpers import dataset_fixtures as fixtures
from tests.helpers.cli import assert_one_line_error, assert_trains, spinefl


def _prepare(name: str, root, out) -> tuple[pd.DataFrame, pd.DataFrame]:
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
              if p.is_file()}
    done = spinefl("datasets", "prepare", name, "--root", str(root), "--out", str(out))
    assert done.returncode == 0, done.stderr
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
             if p.is_file()}
    assert before == after  # the download is only read
    manifest = Manifest.load(out / "manifest.csv")
    report = pd.read_csv(out / "report.csv", keep_default_na=False).set_index("item")
    return manifest.table.set_index("series_id", drop=False), report


def test_verse_keeps_labels_and_geometry_checks_centroids_and_reports_missing_masks(tmp_path):
    expected = fixtures.verse_synthetic(tmp_path / "verse")
    table, report = _prepare("verse", tmp_path / "verse", tmp_path / "out")
    assert report.loc[expected["missing"], "status"] == "skipped"
    assert "no mask" in report.loc[expected["missing"], "reason"]
    row = table.loc["sub-gl003_dir-ax"]
    assert row.split == "val" and row.site == "verse" and row.centroids == ""
    assert "centroid direction" in report.loc[expected["image"], "reason"]
    mask = nib.load(tmp_path / "out" / row["mask"])
    assert mask.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected["mask"])
    assert nib.aff2axcodes(mask.affine) == ("P", "I", "R")


@pytest.mark.skipif(not fixtures.SHARED_VERSE.is_dir(), reason="../shared/fixtures/verse absent")
def test_verse_real_annotation_pir_float64_and_its_centroids(tmp_path):
    real = fixtures.verse_real(tmp_path / "verse")
    table, _ = _prepare("verse", tmp_path / "verse", tmp_path / "out")
    row = table.loc["sub-verse004"]
    assert row.site == "SIEMENS Sensation 64" and row.split == "train"
    mask = load_image(tmp_path / "out" / row["mask"])
    np.testing.assert_array_equal(mask.array, real["mask"].astype(np.int16))
    np.testing.assert_allclose(mask.affine, real["affine"], atol=1e-5)
    assert set(np.unique(mask.array)) - {0} == set(range(16, 25))  # T9 .. L5
    centroids = json.loads((tmp_path / "out" / row.centroids).read_text())
    assert centroids[0]["direction"] == list(nib.aff2axcodes(mask.affine)) == ["P", "I", "R"]
    for entry in centroids[1:]:
        voxels = np.argwhere(mask.array == entry["label"])
        world = nib.affines.apply_affine(mask.affine, voxels)
        centre = nib.affines.apply_affine(mask.affine, [entry["X"], entry["Y"], entry["Z"]])
        assert np.min(np.linalg.norm(world - centre, axis=1)) < 3.0  # on its own vertebra


def test_spider_mask_values_and_gradings_become_the_spinefl_convention(tmp_path):
    expected = fixtures.spider(tmp_path / "spider")
    table, report = _prepare("spider", tmp_path / "spider", tmp_path / "out")
    assert report.loc["images/3_t1.mha", "status"] == "skipped"
    mask = load_image(tmp_path / "out" / table.loc["1_t2", "mask"]).array
    for spider_value, spinefl_value in fixtures.SPIDER_TO_SPINEFL.items():
        np.testing.assert_array_equal(mask[expected["labels"] == spider_value], spinefl_value)
    assert set(np.unique(mask)) == {0, *fixtures.SPIDER_TO_SPINEFL.values()}
    one = table.loc["1_t1"]
    assert (one.sequence, one.site, one.split) == ("T1", "Philips Ingenia", "train")
    assert (one.pfirrmann_l5_s1, one.modic_l5_s1, one.herniation_l5_s1) == ("4", "2", "true")
    assert (one.narrowing_l5_s1, one.bulging_l5_s1) == ("true", "false")
    assert (one.pfirrmann_l1_l2, one.bulging_l1_l2) == ("2", "true")  # IVD label 5 = L1/L2
    two = table.loc["2_t2_SPACE"]
    assert (two.sequence, two.split, two.pfirrmann_l4_l5) == ("T2", "val", "3")
    assert two.site == "SIEMENS Skyra"


def test_rsna_series_severities_and_points_on_the_right_slice(tmp_path):
    expected = fixtures.rsna(tmp_path / "rsna")
    table, report = _prepare("rsna2024", tmp_path / "rsna", tmp_path / "out")
    assert "uneven slice spacing" in report.loc["train_images/1001/2003", "reason"]
    assert "'Mild?' is not Normal/Mild" in report.loc["train.csv", "reason"]
    row = table.loc["2001"]
    assert (row.patient_id, row.sequence, row.modality) == ("rsna-1001", "T1", "MR")
    assert (row.spinal_canal_stenosis_l4_l5, row.left_neural_foraminal_narrowing_l5_s1,
            row.right_subarticular_stenosis_l1_l2) == ("2", "1", "0")
    volume = load_image(tmp_path / "out" / row.image)
    points = json.loads((tmp_path / "out" / row.keypoints).read_text())[1:]
    assert [(p["level"], p["condition"]) for p in points] == [
        ("l5_s1", "left_neural_foraminal_narrowing"), ("l4_l5", "left_neural_foraminal_narrowing")]
    for point, instance in zip(points, (2, 5), strict=True):
        ds = pydicom.dcmread(expected["series"] / f"{instance}.dcm")
        x, y = int(point["X"]), int(point["Y"])
        assert volume.array[x, y, point["Z"]] == ds.pixel_array[y, x]
        position = nib.affines.apply_affine(volume.affine, [0, 0, point["Z"]])
        lps = np.array([-position[0], -position[1], position[2]])
        np.testing.assert_allclose(lps, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)


def test_aasce_landmarks_in_pixels_angles_and_splits(tmp_path):
    expected = fixtures.aasce(tmp_path / "aasce")
    table, _ = _prepare("aasce2019", tmp_path / "aasce", tmp_path / "out")
    assert set(table.split) <= {"train", "val", "test"}
    for name, truth in expected.items():
        row = table[table.patient_id == f"aasce-{name.removesuffix('.jpg')}"].iloc[0]
        subset = "test" if "207" in name else "training"
        assert (row.split == "test") == (subset == "test")
        assert float(row.cobb_pt) == truth["angles"][0] and float(row.cobb_tl) == 7.25
        assert float(row.cobb_angle) == max(truth["angles"])
        image = load_image(tmp_path / "out" / row.image)
        with Image.open(tmp_path / "aasce" / "data" / subset / name) as picture:
            pixels = np.asarray(picture.convert("L"), dtype=np.float32)
        np.testing.assert_array_equal(image.array, pixels.T)
        height, width = pixels.shape
        points = json.loads((tmp_path / "out" / row.keypoints).read_text())[1:]
        assert len(points) == 68
        assert (points[0]["label"], points[0]["corner"]) == ("T1", "top-left")
        assert (points[-1]["label"], points[-1]["corner"]) == ("L5", "bottom-right")
        assert points[5]["X"] == pytest.approx(truth["landmarks"][5] * width)
        assert points[5]["Y"] == pytest.approx(truth["landmarks"][68 + 5] * height)


def test_wrong_folder_and_unknown_dataset_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(spinefl("datasets", "prepare", "verse", "--root",
                                  str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                          "no rawdata/sub-*/*_ct.nii.gz found")
    assert_one_line_error(spinefl("datasets", "prepare", "spider", "--root",
                                  str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                          "overview.csv: not found")
    assert_one_line_error(spinefl("datasets", "prepare", "mnist", "--root",
                                  str(tmp_path / "empty"), "--out", str(tmp_path / "o")),
                          "unknown dataset 'mnist'", "verse, spider, rsna2024, aasce2019")


@pytest.mark.slow
def test_prepared_dataset_trains(tmp_path):
    fixtures.spider(tmp_path / "spider")
    _prepare("spider", tmp_path / "spider", tmp_path / "out")
    assert_trains(tmp_path / "out" / "manifest.csv", tmp_path, modalities=["MR"])


def test_adapters_feed_the_spine_tasks_as_prepared(tmp_path):
    """VerSe centroids feed labelling, SPIDER and RSNA grades feed grading, AASCE corners and
    angles feed Cobb: straight from the prepared manifests, no further step."""
    from tasks.cobb import CobbTask
    from tasks.cobb.landmarks import corner_target
    from tasks.grading import GradingTask
    from tasks.grading.dataset import row_discs
    from tasks.labelling import LabellingTask
    from tests.helpers.task_defaults import default_task

    def prepared(name: str, make) -> Manifest:
        make(tmp_path / name)
        _prepare(name if name != "rsna" else "rsna2024", tmp_path / name, tmp_path / f"{name}-out")
        return Manifest.load(tmp_path / f"{name}-out" / "manifest.csv")

    verse = prepared("verse", fixtures.verse_synthetic)
    labelling: LabellingTask = default_task("labelling")
    row = labelling.select(verse).rows()[0]
    truth = labelling.truth(verse, row, load_image(verse.path(row)))
    assert len(truth) >= 2 and all(8 <= label <= 26 for label in truth)

    grading: GradingTask = default_task("grading")
    spider = prepared("spider", fixtures.spider)
    discs = row_discs(spider, grading.select(spider).rows()[0], grading.settings)
    assert discs and all(d.image.shape == (3, 64, 48) for d in discs)
    assert any(d.labels[0] >= 0 for d in discs)
    rsna = prepared("rsna", fixtures.rsna)
    rows = grading.select(rsna).rows()
    assert rows, "RSNA rows with keypoints and stenosis grades are graded"
    discs = row_discs(rsna, rows[0], grading.settings)
    assert discs and any(d.labels[1] >= 0 for d in discs)

    aasce = prepared("aasce2019", fixtures.aasce)
    cobb: CobbTask = default_task("cobb")
    row = cobb.select(aasce).rows()[0]
    target = corner_target(aasce, row, load_image(aasce.path(row)))
    assert target.array.max() == 1 and target.array.mean() > 0.01
