"""Write a volume as a real DICOM series with pydicom (for tests of DICOM input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tasks.imageio import LPS_TO_RAS, Volume


def write_series(volume: Volume, folder: Path, modality: str = "CT", intercept: float = -1024.0,
                 **header: object) -> list[Path]:
    """One slice file per z index; geometry from the volume's affine, CT in HU via rescale.

    ``header`` sets further attributes on every slice (keyword=value), e.g.
    ``PatientID="12345"`` or ``ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]``.
    """
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    if modality != "CT":
        intercept = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series, study, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for z in range(volume.array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = modality, "TEST", "Test^Phantom"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.AccessionNumber = "", "O", "1", ""
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "120000", ""
        ds.SeriesNumber, ds.InstanceNumber = 3, z + 1
        ds.ImageOrientationPatient = [*map(float, row), *map(float, col)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, z, 1])[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
        stored = np.round(volume.array[:, :, z].T - intercept).astype(np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = stored.tobytes()
        for keyword, value in header.items():
            setattr(ds, keyword, value)
        path = folder / f"slice{z:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
