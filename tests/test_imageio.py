"""Image reading keeps geometry: NIfTI, MetaImage and DICOM (written and read with pydicom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from tasks.imageio import ImageError, Volume, load_image, reorient, save_nifti
from tests.dicom_series import write_series


@pytest.fixture
def permuted_volume() -> Volume:
    rng = np.random.default_rng(0)
    affine = np.array([[0.0, 0.0, 2.5, -40.0], [-0.8, 0.0, 0.0, 60.0], [0.0, -0.8, 0.0, 120.0],
                       [0, 0, 0, 1]])
    return Volume(rng.integers(-1000, 1500, (12, 10, 6)).astype(np.float32), affine)


def world(volume: Volume, index) -> np.ndarray:
    return (volume.affine @ np.append(index, 1.0))[:3]


def test_nifti_round_trip_keeps_geometry(permuted_volume, tmp_path):
    loaded = load_image(save_nifti(permuted_volume, tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(loaded.array, permuted_volume.array)
    np.testing.assert_allclose(loaded.affine, permuted_volume.affine, atol=1e-5)


def test_reorient_keeps_every_voxel_at_its_world_position(permuted_volume):
    lps = reorient(permuted_volume, "LPS")
    assert "".join(__import__("nibabel").aff2axcodes(lps.affine)) == "LPS"
    for index in [(0, 0, 0), (11, 9, 5), (3, 7, 2)]:
        value = permuted_volume.array[index]
        position = world(permuted_volume, index)
        back = np.linalg.inv(lps.affine) @ np.append(position, 1.0)
        assert lps.array[tuple(np.round(back[:3]).astype(int))] == value


def test_metaimage_is_read_in_ras(permuted_volume, tmp_path):
    image = sitk.GetImageFromArray(permuted_volume.array.transpose(2, 1, 0))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ permuted_volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    loaded = load_image(tmp_path / "v.mha")
    np.testing.assert_array_equal(loaded.array, permuted_volume.array)
    np.testing.assert_allclose(loaded.affine, permuted_volume.affine, atol=1e-5)


def test_dicom_series_is_stacked_with_geometry_and_hu(permuted_volume, tmp_path):
    files = write_series(permuted_volume, tmp_path / "series")
    files[2].rename(tmp_path / "series" / "zz_shuffled.dcm")  # order must come from positions
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    volume = load_image(tmp_path / "series")
    assert volume.modality == "CT"
    np.testing.assert_allclose(volume.array, np.round(permuted_volume.array), atol=1e-3)
    np.testing.assert_allclose(volume.affine, permuted_volume.affine, atol=1e-4)


def test_single_slice_dicom_from_pydicom_is_refused_clearly(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "ct.dcm").write_bytes(Path(source).read_bytes())
    with pytest.raises(ImageError, match="single slice"):
        load_image(tmp_path / "one")


def test_broken_and_unknown_files_are_named(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not really gzip")
    with pytest.raises(ImageError, match=r"broken\.nii\.gz: not a readable NIfTI"):
        load_image(tmp_path / "broken.nii.gz")
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(ImageError, match="unsupported image format"):
        load_image(tmp_path / "x.png")
