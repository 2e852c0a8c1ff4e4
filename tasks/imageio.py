"""Reading and writing images with their geometry: NIfTI, MetaImage, DICOM series.

A ``Volume`` is an array plus the 4x4 affine from voxel indices to world
coordinates in RAS millimetres (the NIfTI convention). 3D images have shape
(X, Y, Z); radiographs (projections) are 2D, shape (U, V), with an affine
whose first two columns span the detector plane.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# DICOM Modality (0008,0060) values and the manifest modality they are.
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "CR": "XR", "DX": "XR"}


class ImageError(UserError):
    """An image cannot be read or is not what it claims to be (names the file)."""


@dataclass
class Volume:
    """An image array, its voxel-to-world (RAS, mm) affine, and its modality where the file says."""

    array: np.ndarray
    affine: np.ndarray
    modality: str | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis."""
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(self.array.ndim))

    @property
    def is_projection(self) -> bool:
        """True for a 2D radiograph."""
        return self.array.ndim == 2


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    """Case-insensitive check of a (possibly double) file suffix."""
    return path.name.lower().endswith(suffixes)


def load_image(path: Path | str) -> Volume:
    """Read a NIfTI or MetaImage file, or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        series = read_dicom_series(path)
        if len(series) != 1:
            raise ImageError(f"{path}: expected one DICOM series, found {len(series)}")
        return next(iter(series.values()))
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    if has_suffix(path, NIFTI_SUFFIXES):
        try:
            image = nib.load(str(path))
            array = np.asarray(image.dataobj)
        except Exception as e:  # nibabel raises many types for broken files
            raise ImageError(f"{path}: not a readable NIfTI file ({e})") from None
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3):
            raise ImageError(f"{path}: expected a 2D or 3D image, got shape {array.shape}")
        return Volume(array, image.affine.astype(np.float64))
    if has_suffix(path, ITK_SUFFIXES):
        return _load_itk(path)
    raise ImageError(f"{path}: unsupported image format (use NIfTI, MHA or a DICOM folder)")


def _load_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise ImageError(f"{path}: not a readable MetaImage file ({reason})") from None
    ndim = image.GetDimension()
    array = sitk.GetArrayFromImage(image).transpose(*reversed(range(ndim)))
    direction = np.array(image.GetDirection()).reshape(ndim, ndim)
    lps = np.eye(4)
    lps[:ndim, :ndim] = direction * np.array(image.GetSpacing())
    lps[:ndim, 3] = image.GetOrigin()
    return Volume(array, LPS_TO_RAS @ lps)


def reorient(volume: Volume, code: str) -> Volume:
    """The same image with its axes permuted/flipped to an orientation code ('RAS', 'LPS', ...)."""
    current = nib.orientations.io_orientation(volume.affine)
    target = nib.orientations.axcodes2ornt(tuple(code))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(volume.array, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.array.shape)
    return Volume(np.ascontiguousarray(array), affine, volume.modality)


def save_nifti(volume: Volume, path: Path | str, dtype: type | None = None) -> Path:
    """Write a volume as NIfTI (geometry from its affine); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    image = nib.Nifti1Image(array, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    nib.save(image, str(path))
    return path


def dicom_series_files(folder: Path) -> dict[str, list[Path]]:
    """Files of every DICOM image series under ``folder`` (recursively), by SeriesInstanceUID.

    Files that are not DICOM, or DICOM without image position, are passed over.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[Path]] = defaultdict(list)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "ImagePositionPatient" in header and "SeriesInstanceUID" in header:
            groups[str(header.SeriesInstanceUID)].append(file)
    return dict(groups)


def read_dicom_series(folder: Path) -> dict[str, Volume]:
    """Every image series under ``folder`` as a volume, by SeriesInstanceUID."""
    return {uid: stack_dicom(files) for uid, files in dicom_series_files(folder).items()}


def stack_dicom(files: list[Path]) -> Volume:
    """One series' slices as a volume: sorted along the slice normal, rescaled, with its affine."""
    import pydicom

    where = files[0].parent
    try:
        slices = [pydicom.dcmread(f) for f in files]
    except (OSError, ValueError) as e:
        raise ImageError(f"{where}: unreadable DICOM file ({e})") from None
    if len(slices) < 2:
        raise ImageError(f"{where}: series has a single slice; a volume needs at least two")
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=float)
    if any(not np.allclose(s.ImageOrientationPatient, orientation, atol=1e-4) for s in slices):
        raise ImageError(f"{where}: slices of one series have different orientations")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(s.ImagePositionPatient, normal)))
    positions = np.array([np.dot(s.ImagePositionPatient, normal) for s in slices])
    gaps = np.diff(positions)
    if np.any(gaps <= 1e-3) or np.ptp(gaps) > 0.01 * max(gaps.mean(), 1e-3) + 1e-3:
        raise ImageError(f"{where}: slice positions are duplicated or unevenly spaced")
    pixel_spacing = [float(v) for v in slices[0].PixelSpacing]
    try:
        array = np.stack([_rescaled(s) for s in slices], axis=-1).transpose(1, 0, 2)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as e:
        raise ImageError(f"{where}: cannot decode pixel data ({e})") from None
    first = np.array(slices[0].ImagePositionPatient, dtype=float)
    step = (np.array(slices[-1].ImagePositionPatient, dtype=float) - first) / (len(slices) - 1)
    lps = np.eye(4)
    lps[:3, 0] = row * pixel_spacing[1]
    lps[:3, 1] = col * pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first
    modality = DICOM_MODALITIES.get(str(getattr(slices[0], "Modality", "")))
    return Volume(array, LPS_TO_RAS @ lps, modality)


def _rescaled(dataset) -> np.ndarray:
    pixels = dataset.pixel_array.astype(np.float32)
    slope = float(getattr(dataset, "RescaleSlope", 1.0))
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0))
    return pixels * slope + intercept
