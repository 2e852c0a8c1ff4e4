"""Small copies of public spine datasets in exactly their download layout, formats and values.

Each builder writes a few cases the way the dataset ships them (file names,
folder structure, CSV columns, label values, float64 masks, voxel-space
centroids, instance-numbered DICOM, normalised landmarks) and returns what a
correct adapter must make of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom

from tasks.imageio import LPS_TO_RAS, Volume
from tests.helpers.dicom_series import write_series

SHARED_VERSE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "verse"


def _nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array if dtype is None else array.astype(dtype), affine), path)


def verse_synthetic(root: Path) -> dict:
    """A VerSe 2020 validation subject (float64 mask in PIR, centroid file with the wrong
    direction) and a training subject whose mask is missing."""
    affine = np.array([[0, 0, 1.5, -20], [-1.2, 0, 0, 40], [0, -1.2, 0, 30], [0, 0, 0, 1.0]])
    mask = np.zeros((20, 24, 10))
    mask[4:8, 3:6, 2:8], mask[9:13, 3:6, 2:8], mask[14:18, 3:6, 2:8] = 22, 23, 24
    raw = root / "dataset-02validation" / "rawdata" / "sub-gl003"
    derivatives = root / "dataset-02validation" / "derivatives" / "sub-gl003"
    _nifti(np.full(mask.shape, 100, np.int16), affine, raw / "sub-gl003_dir-ax_ct.nii.gz")
    _nifti(mask, affine, derivatives / "sub-gl003_dir-ax_seg-vert_msk.nii.gz")
    (derivatives / "sub-gl003_dir-ax_seg-subreg_ctd.json").write_text(json.dumps(
        [{"direction": ["R", "A", "S"]}, {"label": 22, "X": 6.0, "Y": 4.0, "Z": 5.0}]))
    lonely = root / "dataset-01training" / "rawdata" / "sub-gl016"
    _nifti(np.zeros((4, 4, 4), np.int16), np.eye(4), lonely / "sub-gl016_dir-ax_ct.nii.gz")
    return {"image": "dataset-02validation/rawdata/sub-gl003/sub-gl003_dir-ax_ct.nii.gz",
            "missing": "dataset-01training/rawdata/sub-gl016/sub-gl016_dir-ax_ct.nii.gz",
            "mask": mask}


def verse_real(root: Path) -> dict:
    """The real VerSe sample annotation (sub-verse004, from ../shared) in the VerSe 2019
    layout, beside a CT of the same grid, and the sidecar naming its scanner."""
    raw = root / "dataset-verse19training" / "rawdata" / "sub-verse004"
    derivatives = root / "dataset-verse19training" / "derivatives" / "sub-verse004"
    derivatives.mkdir(parents=True)
    for name in ("sub-verse004_seg-vert_msk.nii.gz", "sub-verse004_seg-subreg_ctd.json"):
        shutil.copy(SHARED_VERSE / name, derivatives / name)
    mask = nib.load(derivatives / "sub-verse004_seg-vert_msk.nii.gz")
    _nifti(np.zeros(mask.shape, np.int16), mask.affine, raw / "sub-verse004_ct.nii.gz")
    (raw / "sub-verse004_ct.json").write_text(json.dumps(
        {"Manufacturer": "SIEMENS", "ManufacturersModelName": "Sensation 64"}))
    return {"mask": np.asarray(mask.dataobj), "affine": mask.affine,
            "centroids": json.loads((derivatives / "sub-verse004_seg-subreg_ctd.json")
                                    .read_text())}


# SPIDER mask values (1 = L5, counting up; 100 canal; 201 = L5/S1 disc, counting up)
# and the spinefl value each must become, written out by hand.
SPIDER_TO_SPINEFL = {1: 24, 2: 23, 3: 22, 4: 21, 5: 20, 6: 19, 100: 200,
                     201: 124, 202: 123, 203: 122, 204: 121, 205: 120, 206: 119}


def spider(root: Path) -> dict:
    """Two patients' T1/T2/T2-SPACE MHA series with SPIDER-valued masks, overview.csv,
    radiological_gradings.csv; a third image without a mask."""
    import SimpleITK as sitk

    def mha(array: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
        image.SetSpacing((3.3, 0.6, 0.6))
        image.SetDirection((0, 0, 1, 1, 0, 0, 0, -1, 0))  # sagittal slices
        sitk.WriteImage(image, str(path))

    labels = np.zeros((8, 16, 40), np.uint8)
    for i, value in enumerate(SPIDER_TO_SPINEFL):
        labels[1 + i % 6, 2:12, 3 * i: 3 * i + 2] = value
    rng = np.random.default_rng(0)
    for name in ("1_t1", "1_t2", "2_t2_SPACE"):
        mha(rng.normal(300, 50, labels.shape).astype(np.int16), root / "images" / f"{name}.mha")
        mha(labels, root / "masks" / f"{name}.mha")
    mha(np.zeros((4, 4, 4), np.int16), root / "images" / "3_t1.mha")
    pd.DataFrame({"new_file_name": ["1_t1", "1_t2", "2_t2_SPACE", "3_t1"],
                  "subset": ["training", "training", "validation", "training"],
                  "Manufacturer": ["Philips", "Philips", "SIEMENS", "Philips"],
                  "ManufacturerModelName": ["Ingenia", "Ingenia", "Skyra", "Ingenia"]}
                 ).to_csv(root / "overview.csv", index=False)
    pd.DataFrame({"Patient": [1, 1, 2], "IVD label": [1, 5, 2], "Modic": [2, 0, 0],
                  "UP endplate": [0, 0, 1], "LOW endplate": [0, 0, 0],
                  "Spondylolisthesis": [0, 0, 0], "Disc herniation": [1, 0, 0],
                  "Disc narrowing": [1, 0, 1], "Disc bulging": [0, 1, 0],
                  "Pfirrman grade": [4, 2, 3]}).to_csv(root / "radiological_gradings.csv",
                                                        index=False)
    return {"labels": labels}


def rsna(root: Path) -> dict:
    """One study: a sagittal T1 series whose instance numbers run against slice position,
    and an axial T2 made of two stacks; severities and labelled points as RSNA ships them."""
    volume = Volume(np.random.default_rng(1).integers(0, 900, (12, 10, 5)).astype(np.float32),
                    LPS_TO_RAS @ np.array([[0, 0, 4.0, -10], [0.7, 0, 0, -20],
                                           [0, -0.7, 0, 40], [0, 0, 0, 1]]))
    folder = root / "train_images" / "1001" / "2001"
    for path in write_series(volume, root / "tmp", modality="MR"):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 5 - int(ds.InstanceNumber) + 1  # 5 .. 1 along the slice normal
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.InstanceNumber}.dcm")
    axial = root / "train_images" / "1001" / "2003"
    axial.mkdir(parents=True)
    stack = Volume(np.ones((6, 6, 3), np.float32), np.diag([0.7, 0.7, 4.0, 1.0]))
    for offset, first in ((0, 1), (40, 4)):
        shifted = Volume(stack.array, stack.affine.copy())
        shifted.affine[2, 3] = offset
        for path in write_series(shifted, root / f"tmp{offset}", modality="MR",
                                 SeriesInstanceUID="1.2.3.2003"):
            ds = pydicom.dcmread(path)
            ds.InstanceNumber = first + int(ds.InstanceNumber) - 1
            ds.save_as(axial / f"{ds.InstanceNumber}.dcm")
    for tmp in root.glob("tmp*"):
        shutil.rmtree(tmp)
    train = {"study_id": ["1001"], "spinal_canal_stenosis_l4_l5": ["Severe"],
             "left_neural_foraminal_narrowing_l5_s1": ["Moderate"],
             "right_subarticular_stenosis_l1_l2": ["Normal/Mild"],
             "left_subarticular_stenosis_l2_l3": ["Mild?"]}
    pd.DataFrame(train).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"study_id": ["1001", "1001"], "series_id": ["2001", "2003"],
                  "series_description": ["Sagittal T1", "Axial T2"]}).to_csv(
        root / "train_series_descriptions.csv", index=False)
    pd.DataFrame({"study_id": ["1001", "1001"], "series_id": ["2001", "2001"],
                  "instance_number": [2, 5], "condition": ["Left Neural Foraminal Narrowing"] * 2,
                  "level": ["L5/S1", "L4/L5"], "x": [3.5, 7.0], "y": [6.25, 2.0]}).to_csv(
        root / "train_label_coordinates.csv", index=False)
    return {"series": folder}


def aasce(root: Path) -> dict:
    """Two training and one test radiograph (grey JPEG), with filenames, landmarks (fractions,
    x then y) and angles CSVs without headers."""
    from PIL import Image

    rng = np.random.default_rng(2)
    cases = {"training": ["sunhl-1th-01-Mar-2017-310 a ap.jpg",
                          "sunhl-1th-02-Jan-2017-162 A AP.jpg"],
             "test": ["sunhl-1th-03-Jan-2017-207 b ap.jpg"]}
    expected = {}
    for subset, names in cases.items():
        labels = root / "labels" / subset
        labels.mkdir(parents=True)
        landmarks, angles = [], []
        for i, name in enumerate(names):
            pixels = rng.integers(0, 255, (60, 40)).astype(np.uint8)
            (root / "data" / subset).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "data" / subset / name)
            # 17 stacked bodies: corners top-left, top-right, bottom-left, bottom-right.
            tops = 0.05 + 0.053 * np.arange(17)
            xs = np.tile([0.35, 0.65, 0.35, 0.65], 17) + 0.01 * i
            ys = np.repeat(tops, 4) + np.tile([0.0, 0.0, 0.04, 0.04], 17)
            points = np.concatenate([xs, ys])
            landmarks.append(points)
            angles.append([10.5 + i, 24.0 + i, 7.25])
            expected[name] = {"landmarks": points, "angles": angles[-1]}
        pd.DataFrame({"name": names}).to_csv(labels / "filenames.csv", index=False,
                                             header=False)
        pd.DataFrame(landmarks).to_csv(labels / "landmarks.csv", index=False, header=False)
        pd.DataFrame(angles).to_csv(labels / "angles.csv", index=False, header=False)
    return expected
