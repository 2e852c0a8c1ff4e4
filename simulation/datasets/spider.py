"""SPIDER lumbar spine MRI (van der Graaf et al., Sci Data 2024), as downloaded from Zenodo.

    <root>/images/1_t1.mha, 1_t2.mha, 1_t2_SPACE.mha, ...
    <root>/masks/1_t1.mha, ...
    <root>/overview.csv               new_file_name, subset (training/validation), scanner, ...
    <root>/radiological_gradings.csv  Patient, IVD label, Modic, ..., Pfirrman grade

SPIDER's mask values count from the bottom: vertebrae 1 = L5, 2 = L4, ...;
100 = spinal canal; discs 201 = L5/S1, 202 = L4/L5, ... They become the
spinefl convention (VerSe values for vertebrae, 100 + upper vertebra for
discs, 200 for the canal). Gradings are per disc, numbered from the bottom
the same way (IVD label 1 = L5/S1), and become per-level manifest columns.
Split: SPIDER's own subset (training -> train, validation -> val); the
hidden challenge test set is not public, so test patients are drawn from
training by a hash of the patient. Site: the scanner named in overview.csv.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from simulation.datasets.common import DatasetError, Prepared, finish, split_for, write_mask
from tasks.labels import CANAL, disc_label
from tasks.manifest import DISC_LEVELS, format_spacing

NAME = "spider"
DESCRIPTION = "SPIDER lumbar MRI (T1/T2 masks of vertebrae, discs, canal; disc gradings)"
L5 = 24  # VerSe value of L5; SPIDER's vertebra 1
SPIDER_CANAL, SPIDER_DISC = 100, 200
# SPIDER disc number from the bottom (1 = L5/S1) -> spinefl level name.
LEVEL_OF_DISC = {i + 1: level for i, level in enumerate(reversed(DISC_LEVELS))}
SEQUENCES = {"t1": "T1", "t2": "T2", "t2_space": "T2"}
GRADINGS = {"Pfirrman grade": "pfirrmann", "Modic": "modic", "Disc herniation": "herniation",
            "Disc narrowing": "narrowing", "Disc bulging": "bulging"}
_BINARY = {"herniation", "narrowing", "bulging"}
SCANNER_COLUMNS = ("Manufacturer", "ManufacturerModelName", "Scanner", "scanner")


def spinefl_label(value: int) -> int | None:
    """A SPIDER mask value in the spinefl convention (None for anything else)."""
    if value == SPIDER_CANAL:
        return CANAL
    if 1 <= value < L5:
        return L5 + 1 - value
    if SPIDER_DISC < value < SPIDER_DISC + L5:
        return disc_label(L5 + 1 - (value - SPIDER_DISC))
    return None


def grading_columns(gradings: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per patient (as in file names), the per-level manifest columns of its gradings."""
    columns: dict[str, dict[str, str]] = {}
    for record in gradings.to_dict("records"):
        level = LEVEL_OF_DISC.get(int(record["IVD label"]))
        if level is None:
            continue
        row = columns.setdefault(str(int(record["Patient"])), {})
        for source, family in GRADINGS.items():
            value = record.get(source)
            if pd.isna(value):
                continue
            text = str(bool(int(value))).lower() if family in _BINARY else str(int(value))
            row[f"{family}_{level}"] = text
    return columns


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: not found (SPIDER ships it at the top of the download)")
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable CSV ({e})") from None


def prepare(root: Path, out: Path) -> Path:
    """Write the manifest of every SPIDER series under ``root``; returns its path."""
    overview = _read_csv(root / "overview.csv")
    gradings = _read_csv(root / "radiological_gradings.csv")
    for table, path, needed in ((overview, "overview.csv", ("new_file_name", "subset")),
                                (gradings, "radiological_gradings.csv",
                                 ("Patient", "IVD label", *GRADINGS))):
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise DatasetError(f"{root / path}: missing column(s) {', '.join(missing)}")
    scanner_columns = [c for c in SCANNER_COLUMNS if c in overview.columns]
    info = overview.set_index("new_file_name")
    grades = grading_columns(gradings)
    prepared = Prepared(out)
    images = sorted((root / "images").glob("*.mha"))
    if not images:
        raise DatasetError(f"{root / 'images'}: no .mha images (is this SPIDER?)")
    for image in images:
        stem = image.stem
        number, _, kind = stem.partition("_")
        item = str(image.relative_to(root))
        patient = f"spider-{number}"
        sequence = SEQUENCES.get(kind.lower())
        mask_path = root / "masks" / image.name
        if sequence is None:
            prepared.skip(item, "MetaImage", f"unknown series kind '{kind}'", patient)
            continue
        if stem not in info.index:
            prepared.skip(item, "MetaImage", "not listed in overview.csv", patient)
            continue
        pair = prepared.image_and_mask(item, "MetaImage", patient, image, mask_path)
        if pair is None:
            continue
        volume, mask = pair
        written = out / "masks" / f"{stem}_mask.nii.gz"
        unmapped = write_mask(mask, spinefl_label, written)
        meta = info.loc[stem]
        site = " ".join(str(meta[c]) for c in scanner_columns if pd.notna(meta[c])).strip()
        official = "val" if str(meta["subset"]).lower() == "validation" else None
        split = split_for(patient, official, carve=(0.85, 0.0, 0.15))
        prepared.keep(item, "MetaImage", {
            "patient_id": patient, "study_id": patient, "series_id": stem, "modality": "MR",
            "sequence": sequence, "image": prepared.relative(image),
            "spacing": format_spacing(volume.spacing), "site": site or NAME, "source": NAME,
            "split": split, "mask": prepared.relative(written), **grades.get(number, {}),
        }, f"mask values {unmapped} have no spinefl label" if unmapped else "")
    return finish(prepared, NAME)
