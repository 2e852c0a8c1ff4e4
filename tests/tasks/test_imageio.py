"""Image reading keeps geometry: NIfTI, MetaImage and DICOM (written and read with pydicom)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tasks.imageio import ImageError, Volume, load_image, reorient, save_nifti


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


def test_a_folder_is_not_an_image_file_here(tmp_path):
    """DICOM is read at the hospital (client.dicom); the shared image I/O reads files."""
    (tmp_path / "series").mkdir()
    with pytest.raises(ImageError, match="a folder, not an image file"):
        load_image(tmp_path / "series")


def test_broken_and_unknown_files_are_named(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not really gzip")
    with pytest.raises(ImageError, match=r"broken\.nii\.gz: not a readable NIfTI"):
        load_image(tmp_path / "broken.nii.gz")
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(ImageError, match="unsupported image format"):
        load_image(tmp_path / "x.png")
