"""`spinefl manifest export`: a manifest as other frameworks read it, for baselines on the
very same patients and splits.

- ``nnunet``: an nnU-Net v2 raw dataset, ``Dataset<id>_<name>/`` with ``imagesTr``,
  ``labelsTr``, ``imagesTs`` (and ``labelsTs`` where test rows have masks),
  ``dataset.json`` and ``splits_final.json`` (one fold: the manifest's train and val
  patients; copy it into ``nnUNet_preprocessed/Dataset<id>_<name>/`` to train on
  exactly those).
- ``monai``: a MONAI Decathlon-style ``datalist.json`` ("training", "validation",
  "test"), which ``monai.data.load_decathlon_datalist`` reads.

Masks are written again with consecutive labels, as nnU-Net requires (``--labels
structures``: vertebra 1, disc 2, canal 3, the classes spinefl's segmentation trains
on; ``vertebrae``: each VerSe vertebra value 1-28 kept, discs and canal as
background). Images are linked where they already are NIfTI, else converted. One
modality at a time: nnU-Net normalises a channel by its name. ``cases.csv`` maps each
case to its manifest row.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from tasks.errors import UserError
from tasks.files import atomic, writable_folder, write_table, write_text
from tasks.labels import CANAL, DISC_OFFSET, VERTEBRA_NAMES
from tasks.manifest import Manifest

FORMATS = ("nnunet", "monai")
LABELINGS = ("structures", "vertebrae")
# nnU-Net picks CT normalisation for a channel named "CT", z-score for any other name.
CHANNELS = {"CT": "CT", "MR": "MR", "XR": "XR"}


def label_names(labels: str) -> dict[str, int]:
    """Class name -> consecutive value, background first."""
    if labels == "structures":
        return {"background": 0, "vertebra": 1, "disc": 2, "canal": 3}
    return {"background": 0, **{name: value for value, name in sorted(VERTEBRA_NAMES.items())}}


def relabelled(mask: np.ndarray, labels: str) -> np.ndarray:
    """A mask in the spinefl convention, in ``labels``' consecutive values."""
    out = np.zeros(mask.shape, np.uint8)
    vertebra = (mask >= 1) & (mask <= max(VERTEBRA_NAMES))
    if labels == "vertebrae":
        out[vertebra] = mask[vertebra]
        return out
    out[vertebra] = 1
    out[(mask > DISC_OFFSET) & (mask < DISC_OFFSET + 100)] = 2
    out[mask == CANAL] = 3
    return out


def export(manifest_path: Path, out: Path, fmt: str, labels: str = "structures",
           modality: str | None = None, dataset_id: int = 501, name: str = "Spine",
           force: bool = False) -> Path:
    """Write the export; returns the folder holding it. UserError for a bad choice, or for
    an earlier export in its place unless ``force`` (which replaces it)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if labels not in LABELINGS:
        raise UserError(f"--labels must be one of {', '.join(LABELINGS)}, got '{labels}'")
    if not re.fullmatch(r"[A-Za-z0-9]+", name) or not 1 <= dataset_id <= 999:
        raise UserError("--name must be letters and digits and --dataset-id 1-999 "
                        f"(nnU-Net's Dataset<id>_<name>), got {dataset_id} '{name}'")
    manifest = Manifest.load(manifest_path)
    manifest.check_geometry(manifest_path)
    table = manifest.table
    present = sorted(set(table.modality))
    if modality is None and len(present) > 1:
        raise UserError(f"{manifest_path}: holds {', '.join(present)} images; choose one with "
                        "--modality (nnU-Net normalises a channel by its modality)")
    chosen = modality or present[0]
    rows = manifest.select(modality=chosen)
    if len(rows) == 0:
        raise UserError(f"{manifest_path}: no {chosen} rows")
    folder = out / f"Dataset{dataset_id:03d}_{name}" if fmt == "nnunet" else out
    _clear(folder, fmt, force)
    cases = _cases(rows, folder, fmt, labels)
    write_table(pd.DataFrame(cases), folder / "cases.csv")
    if fmt == "nnunet":
        _nnunet_files(cases, folder, chosen, labels)
    else:
        _monai_files(cases, folder, labels)
    return folder


def _clear(folder: Path, fmt: str, force: bool) -> None:
    """Refuse an earlier export in ``folder`` (or remove what it wrote, with ``force``)."""
    index = folder / ("dataset.json" if fmt == "nnunet" else "datalist.json")
    if not index.exists():
        return
    if not force:
        raise UserError(f"{folder}: holds an export ({index.name}); --force replaces it")
    if fmt == "nnunet":
        shutil.rmtree(folder)  # the Dataset<id>_<name> folder is the export's own
    else:
        shutil.rmtree(folder / "labels", ignore_errors=True)
        for name in ("datalist.json", "cases.csv"):
            (folder / name).unlink(missing_ok=True)


def _cases(rows: Manifest, folder: Path, fmt: str, labels: str) -> list[dict[str, str]]:
    cases, seen = [], set()
    for row in rows.rows():
        case = re.sub(r"[^A-Za-z0-9-]", "-", f"{row['patient_id']}-{row['series_id']}"
                      if row.get("series_id") else row["patient_id"])
        while case in seen:
            case += "b"
        seen.add(case)
        split, has_mask = row["split"], bool(row["mask"])
        if split in ("train", "val") and not has_mask:
            continue  # nothing to learn from, nor to validate on
        training = split in ("train", "val")
        image = rows.path(row)
        entry = {"case": case, "split": split, "patient_id": row["patient_id"],
                 "source_image": str(image), "source_mask": str(rows.path(row, "mask"))
                 if has_mask else ""}
        if fmt == "nnunet":
            sub = "Tr" if training else "Ts"
            entry["image"] = _image(image, folder / f"images{sub}" / f"{case}_0000.nii.gz")
            entry["label"] = _label(rows.path(row, "mask"), folder / f"labels{sub}" /
                                    f"{case}.nii.gz", labels) if has_mask else ""
        else:
            entry["image"] = str(image.resolve())
            entry["label"] = _label(rows.path(row, "mask"), folder / "labels" /
                                    f"{case}.nii.gz", labels) if has_mask else ""
        cases.append(entry)
    return cases


def _image(source: Path, target: Path) -> str:
    """``target`` as a link to a NIfTI ``source``, or ``source`` converted to NIfTI."""
    writable_folder(target.parent)
    target.unlink(missing_ok=True)
    if source.name.endswith(".nii.gz"):
        os.symlink(source.resolve(), target)
    else:
        with atomic(target) as temporary:
            sitk.WriteImage(sitk.ReadImage(str(source)), str(temporary))
    return str(target)


def _label(source: Path, target: Path, labels: str) -> str:
    mask = sitk.ReadImage(str(source))
    written = sitk.GetImageFromArray(relabelled(sitk.GetArrayFromImage(mask).astype(np.int64),
                                                labels))
    written.CopyInformation(mask)
    writable_folder(target.parent)
    with atomic(target) as temporary:
        sitk.WriteImage(written, str(temporary))
    return str(target)


def _nnunet_files(cases: list[dict[str, str]], folder: Path, modality: str,
                  labels: str) -> None:
    training = [c for c in cases if c["split"] in ("train", "val")]
    dataset = {"channel_names": {"0": CHANNELS.get(modality, modality)},
               "labels": label_names(labels), "numTraining": len(training),
               "file_ending": ".nii.gz", "spinefl_labels": labels}
    write_text(folder / "dataset.json", json.dumps(dataset, indent=1))
    fold = {"train": [c["case"] for c in training if c["split"] == "train"],
            "val": [c["case"] for c in training if c["split"] == "val"]}
    write_text(folder / "splits_final.json", json.dumps([fold], indent=1))


def _monai_files(cases: list[dict[str, str]], folder: Path, labels: str) -> None:
    def entry(case: dict[str, str]) -> dict[str, str]:
        item = {"image": case["image"], "patient_id": case["patient_id"]}
        return {**item, "label": case["label"]} if case["label"] else item

    datalist = {"labels": {str(v): k for k, v in label_names(labels).items()},
                "training": [entry(c) for c in cases if c["split"] == "train"],
                "validation": [entry(c) for c in cases if c["split"] == "val"],
                "test": [entry(c) for c in cases if c["split"] == "test"]}
    write_text(folder / "datalist.json", json.dumps(datalist, indent=1))
