"""VerSe 2019/2020 (CT; Sekuboyina et al. 2021), subject-based layout as downloaded.

    <root>/dataset-verse19training/rawdata/sub-verse004/sub-verse004_ct.nii.gz
    <root>/dataset-verse19training/rawdata/sub-verse004/sub-verse004_ct.json   (optional sidecar)
    <root>/dataset-verse19training/derivatives/sub-verse004/sub-verse004_seg-vert_msk.nii.gz
    <root>/dataset-verse19training/derivatives/sub-verse004/sub-verse004_seg-subreg_ctd.json
    (VerSe 2020: dataset-01training/..., file names may carry dir-/split- entities)

Labels are already the spinefl convention for vertebrae (VerSe's own); masks
are stored as float64 in the release and are rewritten as int16. Centroids
are voxel coordinates of the mask with a direction entry; they are checked
against the mask's orientation and referenced where they lie. The split
comes from the release folder (training / validation / test); the site is
the sidecar's scanner (Manufacturer + model), else 'verse'.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib

from simulation.datasets.common import DatasetError, Prepared, finish, split_for, write_mask
from tasks.labels import VERTEBRA_NAMES
from tasks.manifest import format_spacing

NAME = "verse"
DESCRIPTION = "VerSe 2019/2020 vertebra segmentation CT (masks, centroids, scanner sites)"
_SPLITS = {"training": "train", "validation": "val", "test": "test"}


def _official_split(path: Path) -> str | None:
    for part in path.parts:
        for word, split in _SPLITS.items():
            if part.startswith("dataset-") and word in part:
                return split
    return None


def _site(sidecar: Path) -> str:
    if not sidecar.is_file():
        return NAME
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return NAME
    model = meta.get("ManufacturersModelName") or meta.get("ManufacturerModelName") or ""
    scanner = f"{meta.get('Manufacturer', '')} {model}".strip()
    return scanner or NAME


def _check_centroids(path: Path, affine) -> str | None:
    """Why a centroid file does not fit its mask, or None."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable centroid file ({e})"
    if not entries or "direction" not in entries[0]:
        return "centroid file has no direction entry first"
    codes = list(nib.aff2axcodes(affine))
    if list(entries[0]["direction"]) != codes:
        return f"centroid direction {entries[0]['direction']} differs from the mask's {codes}"
    return None


def prepare(root: Path, out: Path) -> Path:
    """Write the manifest of every VerSe case under ``root``; returns its path."""
    prepared = Prepared(out)
    images = sorted(root.rglob("rawdata/sub-*/*_ct.nii.gz"))
    if not images:
        raise DatasetError(f"{root}: no rawdata/sub-*/*_ct.nii.gz found (is this VerSe?)")
    for image in images:
        subject = image.parent.name
        stem = image.name.removesuffix("_ct.nii.gz")
        derivatives = image.parents[2] / "derivatives" / subject
        mask_path = derivatives / f"{stem}_seg-vert_msk.nii.gz"
        centroids = derivatives / f"{stem}_seg-subreg_ctd.json"
        item = str(image.relative_to(root))
        patient = f"verse-{subject.removeprefix('sub-')}"
        pair = prepared.image_and_mask(item, "NIfTI", patient, image, mask_path)
        if pair is None:
            continue
        ct, mask = pair
        written = out / "masks" / f"{stem}_mask.nii.gz"
        unmapped = write_mask(mask, lambda v: v if v in VERTEBRA_NAMES else None, written)
        notes = [f"mask values {unmapped} are not VerSe vertebrae; set to background"] \
            if unmapped else []
        ctd = ""
        if centroids.is_file():
            problem = _check_centroids(centroids, mask.affine)
            if problem:
                notes.append(f"centroids not used: {problem}")
            else:
                ctd = prepared.relative(centroids)
        prepared.keep(item, "NIfTI", {
            "patient_id": patient, "study_id": stem, "series_id": stem, "modality": "CT",
            "sequence": "", "image": prepared.relative(image),
            "spacing": format_spacing(ct.spacing), "site": _site(image.with_suffix("")
                                                                 .with_suffix(".json")),
            "source": NAME, "split": split_for(patient, _official_split(image)),
            "mask": prepared.relative(written), "centroids": ctd,
        }, "; ".join(notes))
    return finish(prepared, NAME)
