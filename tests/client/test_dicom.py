"""DICOM series into volumes: real files from pydicom, and series written here and then broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from client.dicom import (
    SeriesError,
    build_volume,
    group_series,
    load_folder,
    read_header,
    scan_folder,
    series_problem,
)
from tasks.imageio import LPS_TO_RAS, ImageError, Volume
from tests.helpers.dicom_series import write_series


def _volume(shape=(12, 10, 6), spacing=(0.8, 0.9, 2.5)) -> Volume:
    rng = np.random.default_rng(1)
    return Volume(rng.integers(-1000, 1500, shape).astype(np.float32),
                  np.diag([*spacing, 1.0]))


def _series(folder: Path) -> list:
    series, _ = scan_folder(folder)
    assert len(series) == 1
    return next(iter(series.values()))


def test_enhanced_ct_from_pydicom_has_header_geometry_and_hu():
    path = Path(get_testdata_file("eCT_Supplemental.dcm"))
    ds = pydicom.dcmread(path)
    built = build_volume([read_header(path)])
    volume = built.volume
    shared = ds.SharedFunctionalGroupsSequence[0]
    row_col = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    pixel_spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient
                          for f in ds.PerFrameFunctionalGroupsSequence], float)
    assert volume.array.shape == (ds.Columns, ds.Rows, 2)
    lps = LPS_TO_RAS @ volume.affine
    np.testing.assert_allclose(lps[:3, 0], row_col[:3] * pixel_spacing[1], atol=1e-6)
    np.testing.assert_allclose(lps[:3, 1], row_col[3:] * pixel_spacing[0], atol=1e-6)
    normal = np.cross(row_col[:3], row_col[3:])
    first = positions[np.argmin(positions @ normal)]
    np.testing.assert_allclose(lps[:3, 3], first, atol=1e-6)
    np.testing.assert_allclose(np.abs(lps[:3, 2]), [0, 0, 10.0], atol=1e-6)
    assert volume.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    frame = int(np.argmin(positions @ normal))
    np.testing.assert_allclose(volume.array[:, :, 0], ds.pixel_array[frame].T - 1024.0)


def test_real_radiograph_is_a_2d_image_with_its_orientation():
    path = Path(get_testdata_file("RG1_UNCR.dcm"))
    ds = pydicom.dcmread(path)
    built = build_volume([read_header(path)])
    assert built.volume.modality == "XR"
    assert built.volume.array.shape == (ds.Columns, ds.Rows)
    assert list(ds.PatientOrientation) == ["L", "F"]
    lps = LPS_TO_RAS @ built.volume.affine
    np.testing.assert_allclose(lps[:3, 0], [1, 0, 0])  # along a row: patient left
    np.testing.assert_allclose(lps[:3, 1], [0, 0, -1])  # down a column: feet
    assert any("pixel spacing" in n for n in built.notes)  # its PixelSpacing is 0\0


def test_written_series_is_sorted_by_position_not_file_name(tmp_path):
    volume = _volume()
    files = write_series(volume, tmp_path / "s")
    files[0].rename(tmp_path / "s" / "zzz.dcm")
    built = build_volume(_series(tmp_path / "s"))
    np.testing.assert_allclose(built.volume.array, volume.array)
    np.testing.assert_allclose(built.volume.affine, volume.affine, atol=1e-6)


@pytest.mark.parametrize(("breakage", "reason"), [
    ("gap", "uneven slice spacing"),
    ("orientation", "different orientations"),
    ("same_position", "share a position"),
    ("truncated", "cannot decode pixel data"),
    ("no_spacing", "no valid PixelSpacing"),
])
def test_broken_series_are_refused_with_the_reason(tmp_path, breakage, reason):
    files = write_series(_volume(), tmp_path / "s")
    if breakage == "gap":
        files[3].unlink()
    else:
        ds = pydicom.dcmread(files[2])
        if breakage == "orientation":
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        elif breakage == "same_position":
            ds.ImagePositionPatient = pydicom.dcmread(files[1]).ImagePositionPatient
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
        elif breakage == "no_spacing":
            del ds.PixelSpacing
        ds.save_as(files[2])
        if breakage == "truncated":
            data = files[2].read_bytes()
            files[2].write_bytes(data[: len(data) - 100])
    with pytest.raises(SeriesError, match=reason):
        build_volume(_series(tmp_path / "s"))


def test_duplicate_instances_are_ignored_and_said(tmp_path):
    volume = _volume()
    files = write_series(volume, tmp_path / "s")
    shutil.copy(files[2], tmp_path / "s" / "copy_of_slice2.dcm")
    built = build_volume(_series(tmp_path / "s"))
    np.testing.assert_allclose(built.volume.array, volume.array)
    assert built.notes == ["1 duplicate instance(s) ignored"]


def test_series_that_are_not_images_to_keep_are_named(tmp_path):
    for name in ("test-SR.dcm", "rtdose.dcm", "liver.dcm", "CT_small.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    write_series(_volume(), tmp_path / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    series, passed_over = scan_folder(tmp_path)
    assert passed_over == []
    reasons = {files[0].path.name if len(files) == 1 else files[0].path.parent.name:
               series_problem(files) for files in series.values()}
    assert "Comprehensive SR Storage without pixel data" in reasons["test-SR.dcm"]
    assert "modality 'RTDOSE'" in reasons["rtdose.dcm"]
    assert "modality 'SEG'" in reasons["liver.dcm"]
    assert "scout/localizer" in reasons["scout"]
    assert reasons["CT_small.dcm"] is None
    with pytest.raises(SeriesError, match="single slice"):
        build_volume(series[pydicom.dcmread(tmp_path / "CT_small.dcm").SeriesInstanceUID])


def test_compressed_series_without_a_decoder_is_named(tmp_path):
    """JPEG Lossless needs pylibjpeg or GDCM, which are not installed here."""
    source = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))
    uid = pydicom.uid.generate_uid()
    for z in range(3):
        source.Modality, source.SeriesInstanceUID = "CT", uid
        source.SOPInstanceUID = pydicom.uid.generate_uid()
        source.ImagePositionPatient, source.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
        source.save_as(tmp_path / f"{z}.dcm")
    problem = series_problem(_series(tmp_path))
    assert "JPEG Lossless" in problem and "no decoder" in problem


def test_files_that_are_not_dicom_are_passed_over_with_a_reason(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageError, match="not a DICOM file"):
        read_header(tmp_path / "notes.txt")
    series, passed_over = scan_folder(tmp_path)
    assert series == {}
    assert sorted(p.name for p, _ in passed_over) == ["empty.dcm", "notes.txt"]


def test_two_series_in_one_folder_are_two_series(tmp_path):
    write_series(_volume(), tmp_path / "a")
    for path in write_series(_volume(), tmp_path / "b"):
        path.rename(tmp_path / "a" / f"b_{path.name}")
    headers = [read_header(p) for p in sorted((tmp_path / "a").iterdir())]
    assert sorted(len(files) for files in group_series(headers).values()) == [6, 6]


def test_dicom_series_is_stacked_with_geometry_and_hu(permuted_volume, tmp_path):
    files = write_series(permuted_volume, tmp_path / "series")
    files[2].rename(tmp_path / "series" / "zz_shuffled.dcm")  # order must come from positions
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    volume = load_folder(tmp_path / "series")
    assert volume.modality == "CT"
    np.testing.assert_allclose(volume.array, np.round(permuted_volume.array), atol=1e-3)
    np.testing.assert_allclose(volume.affine, permuted_volume.affine, atol=1e-4)


def test_single_slice_dicom_from_pydicom_is_refused_clearly(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "ct.dcm").write_bytes(Path(source).read_bytes())
    with pytest.raises(ImageError, match="single slice"):
        load_folder(tmp_path / "one")
