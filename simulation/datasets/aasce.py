"""AASCE 2019 scoliosis radiographs (SpineWeb dataset 16, "boostnet_labeldata"), as downloaded.

    <root>/data/training/<name>.jpg          (and data/test/)
    <root>/labels/training/filenames.csv     one image file name per row, no header
    <root>/labels/training/landmarks.csv     136 values per row, no header: the x of the 68
                                             landmarks, then their y, as fractions of the
                                             image width and height
    <root>/labels/training/angles.csv        3 values per row, no header: the proximal
                                             thoracic, main thoracic and thoracolumbar/lumbar
                                             Cobb angles in degrees
    (labels/test/ the same)

The 68 landmarks are the 4 corners of the 17 vertebrae T1..L5, top to bottom,
in the order top-left, top-right, bottom-left, bottom-right. Images are
grey JPEGs of AP (posterior-anterior) views without pixel spacing: they are
written as 2D NIfTI at 1 mm per pixel (Cobb angles do not depend on scale),
oriented as a standard AP view (rows towards the patient's left, columns
towards the feet). Landmarks become a keypoints file in pixel coordinates
(X = column, Y = row) of that image. Split: the release's test set is test;
validation patients are drawn from training by a hash of the name. Site:
the release comes from one centre and names none, so 'aasce'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from client.dicom import radiograph_affine
from simulation.datasets.common import (
    DatasetError,
    Prepared,
    finish,
    split_for,
)
from tasks.imageio import Volume, save_nifti
from tasks.labels import VERTEBRA_NAMES
from tasks.points import CORNERS, write_points

NAME = "aasce2019"
DESCRIPTION = "AASCE 2019 scoliosis AP radiographs (68 vertebra corners, three Cobb angles)"
VERTEBRAE = [VERTEBRA_NAMES[v] for v in range(8, 25)]  # T1 .. L5
LANDMARKS = len(VERTEBRAE) * len(CORNERS)


def _table(path: Path, width: int) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: not found (AASCE ships it under labels/<set>/)")
    table = pd.read_csv(path, header=None)
    if table.shape[1] != width:
        raise DatasetError(f"{path}: {table.shape[1]} columns per row, expected {width}")
    return table


def landmark_points(values: np.ndarray, width: int, height: int) -> list[dict]:
    """The 68 landmarks of one row of landmarks.csv as named points in pixels."""
    xs, ys = values[:LANDMARKS] * width, values[LANDMARKS:] * height
    return [{"label": VERTEBRAE[i // 4], "corner": CORNERS[i % 4], "X": float(xs[i]),
             "Y": float(ys[i])} for i in range(LANDMARKS)]


def prepare(root: Path, out: Path) -> Path:
    """Write the manifest of every AASCE image under ``root``; returns its path."""
    from PIL import Image, UnidentifiedImageError

    prepared = Prepared(out)
    sets = [s for s in ("training", "test") if (root / "labels" / s).is_dir()]
    if not sets:
        raise DatasetError(f"{root}: no labels/training or labels/test (is this AASCE 2019?)")
    for subset in sets:
        labels = root / "labels" / subset
        names = _table(labels / "filenames.csv", 1)[0].astype(str).tolist()
        landmarks = _table(labels / "landmarks.csv", 2 * LANDMARKS).to_numpy(float)
        angles = _table(labels / "angles.csv", 3).to_numpy(float)
        if not len(names) == len(landmarks) == len(angles):
            raise DatasetError(f"{labels}: filenames, landmarks and angles have "
                               f"{len(names)}, {len(landmarks)} and {len(angles)} rows")
        for name, points, cobb in zip(names, landmarks, angles, strict=True):
            path = root / "data" / subset / name
            item = str(path.relative_to(root))
            patient = f"aasce-{Path(name).stem}"
            if np.any(points < 0) or np.any(points > 1):
                prepared.skip(item, "JPEG", "landmarks outside [0, 1] (not fractions of the "
                              "image size)", patient)
                continue
            try:
                with Image.open(path) as picture:
                    pixels = np.asarray(picture.convert("L"), dtype=np.float32)
            except (OSError, UnidentifiedImageError) as e:
                prepared.skip(item, "JPEG", f"unreadable image ({e})", patient)
                continue
            height, width = pixels.shape
            stem = Path(name).stem.replace(" ", "_")
            image = out / "images" / subset / f"{stem}.nii.gz"
            affine = radiograph_affine(("L", "F"), (1.0, 1.0))
            save_nifti(Volume(pixels.T.copy(), affine), image, np.float32)
            keypoints = out / "keypoints" / subset / f"{stem}.json"
            write_points(landmark_points(points, width, height), affine, keypoints)
            official = "test" if subset == "test" else None
            prepared.keep(item, "JPEG", {
                "patient_id": patient, "study_id": patient, "series_id": stem,
                "modality": "XR", "sequence": "", "image": prepared.relative(image),
                "spacing": "1x1", "site": "aasce", "source": NAME,
                "split": split_for(patient, official, carve=(0.85, 0.15, 0.0)), "view": "AP",
                "keypoints": prepared.relative(keypoints), "cobb_pt": f"{cobb[0]:g}",
                "cobb_mt": f"{cobb[1]:g}", "cobb_tl": f"{cobb[2]:g}",
                "cobb_angle": f"{cobb.max():g}",
            }, "no pixel spacing in the release; 1 mm per pixel")
    return finish(prepared, NAME)
