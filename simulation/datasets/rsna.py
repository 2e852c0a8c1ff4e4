"""RSNA 2024 Lumbar Spine Degenerative Classification (Kaggle), as downloaded.

    <root>/train.csv                        study_id + 25 <condition>_<level> severity columns
    <root>/train_series_descriptions.csv    study_id, series_id, series_description
    <root>/train_label_coordinates.csv      study_id, series_id, instance_number, condition,
                                            level, x, y
    <root>/train_images/<study_id>/<series_id>/<instance_number>.dcm

Each series becomes one NIfTI volume (through the same DICOM reader as a
hospital's export, so its geometry comes from the headers). Severities are
study-level and go on every series of the study as 0 normal/mild, 1
moderate, 2 severe (the columns keep RSNA's names). The labelled points of a
series become a keypoints file in voxel coordinates of its volume: x, y are
the pixel column and row, and the instance number becomes the slice index
after sorting along the slice normal. Axial series made of several stacks
(unevenly spaced) are skipped with that reason. The data come with no split
and no site: splits are drawn by a hash of the study, the site is the
scanner named in the DICOM headers, else 'rsna'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from client.dicom import SeriesError, build_volume, scan_folder, series_problem
from simulation.datasets.common import (
    DatasetError,
    Prepared,
    finish,
    split_for,
)
from tasks.imageio import save_nifti
from tasks.manifest import RSNA_CONDITIONS, format_spacing
from tasks.points import write_points

NAME = "rsna2024"
DESCRIPTION = "RSNA 2024 lumbar spine degenerative classification (MR DICOM, severities, points)"
SEVERITY = {"Normal/Mild": "0", "Moderate": "1", "Severe": "2"}
LEVELS = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")


def _sequence(description: str) -> str:
    text = description.upper()
    return "T1" if "T1" in text else "T2" if "T2" in text else "STIR" if "STIR" in text \
        else "unknown"


def _snake(text: str) -> str:
    return text.strip().lower().replace("/", "_").replace(" ", "_")


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: not found (RSNA 2024 ships it at the top of the download)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def severities(train: pd.DataFrame) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Per study, the manifest severity columns; and the values that were not understood."""
    by_study: dict[str, dict[str, str]] = {}
    unknown = []
    columns = [f"{c}_{level}" for c in RSNA_CONDITIONS for level in LEVELS]
    for record in train.to_dict("records"):
        row = {}
        for column in columns:
            value = record.get(column, "")
            if value in SEVERITY:
                row[column] = SEVERITY[value]
            elif value:
                unknown.append(f"study {record['study_id']}, {column}: '{value}'")
        by_study[record["study_id"]] = row
    return by_study, unknown


def prepare(root: Path, out: Path) -> Path:
    """Write the manifest of every RSNA 2024 training series under ``root``; returns its path."""
    train = _read(root / "train.csv", ("study_id",))
    descriptions = _read(root / "train_series_descriptions.csv",
                         ("study_id", "series_id", "series_description"))
    coordinates = _read(root / "train_label_coordinates.csv",
                        ("study_id", "series_id", "instance_number", "condition", "level",
                         "x", "y"))
    grades, unknown = severities(train)
    points = {key: group for key, group in coordinates.groupby(["study_id", "series_id"])}
    prepared = Prepared(out)
    for record in descriptions.to_dict("records"):
        study, series = record["study_id"], record["series_id"]
        folder = root / "train_images" / study / series
        item = str(folder.relative_to(root))
        patient = f"rsna-{study}"
        found, passed_over = scan_folder(folder) if folder.is_dir() else ({}, [])
        if len(found) != 1:
            prepared.skip(item, "DICOM series", f"{len(found)} DICOM series in the folder "
                          "(expected one)", patient)
            continue
        files = next(iter(found.values()))
        problem = series_problem(files)
        if problem:
            prepared.skip(item, "DICOM series", problem, patient, len(files))
            continue
        try:
            built = build_volume(files)
        except SeriesError as e:
            prepared.skip(item, "DICOM series", str(e), patient, len(files))
            continue
        notes = built.notes + [f"{len(passed_over)} file(s) passed over"] * bool(passed_over)
        image = out / "images" / study / f"{series}.nii.gz"
        save_nifti(built.volume, image, np.float32)
        keypoints = ""
        if (study, series) in points:
            slice_of = {f.instance_number: built.files.index(f.path)
                        for f in files if f.path in built.files}
            listed, missing = [], 0
            for p in points[(study, series)].to_dict("records"):
                index = slice_of.get(int(float(p["instance_number"])))
                if index is None:
                    missing += 1
                    continue
                listed.append({"condition": _snake(p["condition"]), "level": _snake(p["level"]),
                               "X": float(p["x"]), "Y": float(p["y"]), "Z": index})
            if missing:
                notes.append(f"{missing} labelled point(s) on instances not in the series")
            path = out / "keypoints" / study / f"{series}.json"
            write_points(listed, built.volume.affine, path)
            keypoints = prepared.relative(path)
        prepared.keep(item, "DICOM series", {
            "patient_id": patient, "study_id": study, "series_id": series, "modality": "MR",
            "sequence": _sequence(record["series_description"]),
            "image": prepared.relative(image), "spacing": format_spacing(built.volume.spacing),
            "site": files[0].scanner or "rsna", "source": NAME,
            "split": split_for(patient, None), "keypoints": keypoints, **grades.get(study, {}),
        }, "; ".join(notes), len(files))
    for problem in unknown:
        prepared.skip("train.csv", "grade", f"{problem} is not Normal/Mild, Moderate or Severe")
    return finish(prepared, NAME)
