"""Reading and writing images with their geometry: NIfTI, MetaImage, DICOM series.

A ``Volume`` is an array plus the 4x4 affine from voxel indices to world
coordinates in RAS millimetres (the NIfTI convention). 3D images have shape
(X, Y, Z); radiographs (projections) are 2D, shape (U, V), with an affine
whose first two columns span the detector plane.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from tasks.errors import UserError
from tasks.files import atomic, writable_folder

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageError(UserError):
    """An image cannot be read or is not what it claims to be (names the file)."""


@dataclass
class Volume:
    """An image array, its voxel-to-world (RAS, mm) affine, and its modality where the file says."""

    array: np.ndarray
    affine: np.ndarray
    modality: str | None = None
    # The file's own shape where it differs from ``array``'s (a radiograph stored as
    # (X, Y, 1) is read as (X, Y)): what a mask predicted for it is written back as.
    stored_shape: tuple[int, ...] | None = None

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


# Words of a file or folder name that state a modality (and, for MR, a sequence).
NAMED_MODALITIES = {"ct": ("CT", ""), "mr": ("MR", ""), "mri": ("MR", ""), "t1": ("MR", "T1"),
                    "t1w": ("MR", "T1"), "t2": ("MR", "T2"), "t2w": ("MR", "T2"),
                    "stir": ("MR", "STIR"), "xr": ("XR", ""), "xray": ("XR", ""),
                    "cr": ("XR", ""), "dx": ("XR", "")}


def modality_in_name(path: Path | str) -> tuple[str, str]:
    """The modality and MR sequence the words of ``path``'s parts state, first word first
    (``P1/t2_sag.nii.gz``: MR, T2); empty strings where none does."""
    modality, sequence = "", ""
    for part in Path(path).parts:
        for word in re.split(r"[^a-z0-9]+", part.lower()):
            found, found_sequence = NAMED_MODALITIES.get(word, ("", ""))
            modality = modality or found
            sequence = sequence or found_sequence
    return modality, sequence


def load_image(path: Path | str) -> Volume:
    """Read a NIfTI or MetaImage file (DICOM is read at the hospital: ``client.dicom``)."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: a folder, not an image file (DICOM series are read by "
                         "`spinefl predict` and `spinefl hospital prepare`)")
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    if has_suffix(path, NIFTI_SUFFIXES):
        try:
            image = nib.load(str(path))
            array = np.asarray(image.dataobj)
        except Exception as e:  # nibabel raises many types for broken files
            raise ImageError(f"{path}: not a readable NIfTI file ({e})") from None
        stored = array.shape
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3):
            raise ImageError(f"{path}: expected a 2D or 3D image, got shape {array.shape}")
        return Volume(array, image.affine.astype(np.float64),
                      stored_shape=stored if stored != array.shape else None)
    if has_suffix(path, ITK_SUFFIXES):
        return _load_itk(path)
    raise ImageError(f"{path}: unsupported image format (use NIfTI, MHA or a DICOM folder)")


def stored_shape(path: Path) -> tuple[int, ...]:
    """An image file's array shape as stored, from its header alone; ImageError when the
    header cannot be read."""
    try:
        if has_suffix(path, NIFTI_SUFFIXES):
            return tuple(int(n) for n in nib.load(str(path)).shape)
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(int(n) for n in reader.GetSize())
    except Exception as e:  # nibabel and SimpleITK raise many types for broken files
        raise ImageError(f"{path}: not a readable image header ({str(e).splitlines()[0]})") \
            from None


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
    """Write a volume as NIfTI (geometry from its affine), atomically; returns the path."""
    path = Path(path)
    writable_folder(path.parent)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    image = nib.Nifti1Image(array, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    with atomic(path) as temporary:
        nib.save(image, str(temporary))
    return path
