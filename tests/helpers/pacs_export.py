"""A messy PACS export, as hospitals hand them over: good series beside everything that goes wrong.

Real files written by others (pydicom's test data) sit beside series written
here with pydicom and then broken on purpose. ``EXPECTED`` says what
`spinefl hospital prepare` must do with each item of the report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from tasks.imageio import Volume, save_nifti
from tests.helpers.dicom_series import write_series

# report item -> (status, a fragment of the reason)
EXPECTED: dict[str, tuple[str, str]] = {
    "MRN001/ct": ("kept", ""),
    "MRN001/mr": ("kept", ""),
    "MRN002/scout": ("skipped", "scout/localizer"),
    "MRN002/uneven": ("skipped", "uneven slice spacing"),
    "MRN002/truncated": ("skipped", "slice0001.dcm: truncated file (pixel data runs past"),
    "MRN002/burned": ("skipped", "burned-in annotation"),
    "MRN002/duplicates": ("kept", "1 duplicate instance(s) ignored"),
    "MRN002/pixelless": ("skipped", "2 of 6 files have no pixel data"),
    "MRN003/jpeg-lossless": ("skipped", "no decoder"),
    "misc/test-SR.dcm": ("skipped", "without pixel data"),
    "misc/rtdose.dcm": ("skipped", "modality 'RTDOSE'"),
    "misc/CT_small.dcm": ("skipped", "single slice"),
    "misc/eCT_Supplemental.dcm": ("kept", "enhanced multi-frame"),
    "misc/notes.txt": ("skipped", "not a DICOM file"),
    "misc/DICOMDIR": ("skipped", "not an image object"),
    "misc/cut_in_header.dcm": ("skipped", "a truncated file"),
    "misc/cut_before_pixels.dcm": ("skipped", "truncated file (1500 of 8192 bytes"),
    "nifti/pat9/t1.nii.gz": ("kept", ""),
    "nifti/broken_ct.nii.gz": ("skipped", "not a readable NIfTI"),
    "nifti/orphan_seg.nii.gz": ("skipped", "mask without an image"),
}


def volume(seed: int, shape=(16, 14, 6), spacing=(1.0, 1.1, 3.0)) -> Volume:
    """A random CT-like volume with an oblique-free affine."""
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(-1000, 1500, shape).astype(np.float32),
                  np.diag([*spacing, 1.0]))


def mask_for(image: Volume) -> Volume:
    """A mask in the spinefl convention on the image's grid (L1, L1/L2 disc, canal)."""
    labels = np.zeros(image.array.shape, np.int16)
    labels[2:6], labels[6:8], labels[10:12] = 20, 120, 200
    return Volume(labels, image.affine)


def build(root: Path) -> Path:
    """Write the export under ``root``; returns it."""
    person = {"PatientName": "Doe^John", "InstitutionName": "St Elsewhere",
              "StudyDate": "20200315", "PatientBirthDate": "19700101"}
    ct = volume(1)
    write_series(ct, root / "MRN001" / "ct", PatientID="MRN001", **person)
    save_nifti(mask_for(ct), root / "MRN001" / "ct" / "seg_mask.nii.gz")
    write_series(volume(2), root / "MRN001" / "mr", modality="MR", PatientID="MRN001",
                 SeriesDescription="T2 SAG", **person)
    other = {"PatientID": "MRN002", "PatientName": "Roe^Richard"}
    write_series(volume(3), root / "MRN002" / "scout",
                 ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], **other)
    files = write_series(volume(4), root / "MRN002" / "uneven", **other)
    files[2].unlink()
    files = write_series(volume(5), root / "MRN002" / "truncated", **other)
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-200])
    write_series(volume(6), root / "MRN002" / "burned", BurnedInAnnotation="YES", **other)
    files = write_series(volume(7), root / "MRN002" / "duplicates", **other)
    shutil.copy(files[0], files[0].with_name("copy.dcm"))
    files = write_series(volume(9), root / "MRN002" / "pixelless", **other)
    for path in files[1:3]:  # two of six slices lost their pixels on the way
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    _jpeg_lossless_series(root / "MRN003" / "jpeg-lossless")
    misc = root / "misc"
    misc.mkdir()
    for name in ("test-SR.dcm", "rtdose.dcm", "CT_small.dcm", "eCT_Supplemental.dcm"):
        shutil.copy(get_testdata_file(name), misc / name)
    (misc / "notes.txt").write_text("export log")
    shutil.copy(get_testdata_file("DICOMDIR"), misc / "DICOMDIR")
    (misc / "cut_in_header.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm"))
                                             .read_bytes()[:1000])
    (misc / "cut_before_pixels.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm"))
                                                 .read_bytes()[:3000])
    t1 = volume(8)
    save_nifti(t1, root / "nifti" / "pat9" / "t1.nii.gz")
    save_nifti(mask_for(t1), root / "nifti" / "pat9" / "t1_mask.nii.gz")
    (root / "nifti" / "broken_ct.nii.gz").write_bytes(b"not gzip at all")
    save_nifti(mask_for(t1), root / "nifti" / "orphan_seg.nii.gz")
    return root


def _jpeg_lossless_series(folder: Path) -> None:
    """Three CT slices whose pixels are JPEG Lossless (pydicom's JPEG-LL.dcm), which no
    installed decoder reads."""
    folder.mkdir(parents=True)
    source = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))
    source.Modality, source.PatientID = "CT", "MRN003"
    source.SeriesInstanceUID = pydicom.uid.generate_uid()
    for z in range(3):
        source.SOPInstanceUID = pydicom.uid.generate_uid()
        source.ImagePositionPatient, source.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
        source.PixelSpacing = [1, 1]
        source.save_as(folder / f"{z}.dcm")
