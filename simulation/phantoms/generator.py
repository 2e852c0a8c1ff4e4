"""Generate a phantom cohort on disk: NIfTI images and masks, centroid JSON, a manifest.

Layout of the output folder (every file inspectable)::

    phantoms.json            the validated cohort config that made it, and the generator version
    manifest.csv             one row per image (see docs/manifest.md)
    P0001/ct.nii.gz          image (CT in HU; MR t1/t2; XR xr_ap/xr_lat)
    P0001/ct_mask.nii.gz     labels in the spinefl convention
    P0001/ct_ctd.json        VerSe-style centroids, voxel coordinates of the mask
    P0001/xr_ap_corners.json vertebral body corners (T12/L1-L5) on the AP radiograph, pixels

Each patient draws from its own random stream (seed, patient number), so a
patient's images do not depend on how many others are generated.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from simulation.phantoms.anatomy import SACRUM, Anatomy, sample_anatomy
from simulation.phantoms.config import CohortConfig, Scanner
from simulation.phantoms.imaging import acquire, ct_hu, mr_signal, project
from simulation.phantoms.raster import Grid, grid_around, rasterize
from tasks.errors import UserError
from tasks.files import write_text
from tasks.imageio import Volume, reorient, save_nifti
from tasks.labels import VERTEBRA_NAMES
from tasks.locks import folder_lock, run_files
from tasks.manifest import DISC_LEVELS, VERTEBRAE, Manifest, format_spacing, from_records
from tasks.points import CORNERS, to_voxels, write_points

CONFIG_FILE = "phantoms.json"
# Raised whenever what the generator writes for a config changes (2: AP body corners and
# canal stenosis columns), so a folder made by an older one is not reused.
GENERATOR_VERSION = 2
_DISC_LEVEL = dict(zip(range(19, 25), DISC_LEVELS, strict=True))
RSNA_LEVELS = DISC_LEVELS[1:]
_VERTEBRA = dict(zip(range(19, 25), VERTEBRAE, strict=True))


class OutputExistsError(UserError):
    """The output folder holds something else; the user must pass --force."""


def site_of_patients(config: CohortConfig) -> list[Scanner]:
    """Scanner of each patient: shares turned into counts by largest remainder, interleaved."""
    shares = np.array([s.share for s in config.scanners], dtype=float)
    exact = shares / shares.sum() * config.patients
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: config.patients - counts.sum()]:
        counts[i] += 1
    order: list[Scanner] = []
    remaining = counts.copy()
    while remaining.sum():
        for i, scanner in enumerate(config.scanners):
            if remaining[i]:
                order.append(scanner)
                remaining[i] -= 1
    return order


def splits_of_patients(sites: list[Scanner], fractions: tuple[float, ...], seed: int) -> list[str]:
    """Split of each patient, assigned within each site so every site has train/val/test."""
    rng = np.random.default_rng([seed, 7919])
    splits = [""] * len(sites)
    for name in dict.fromkeys(s.name for s in sites):
        members = [i for i, s in enumerate(sites) if s.name == name]
        rng.shuffle(members)
        n = len(members)
        n_val = round(fractions[1] * n)
        n_test = round(fractions[2] * n)
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        for rank, i in enumerate(members):
            splits[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return splits


def test_only_sites(config: CohortConfig) -> list[Scanner]:
    """Scanner of each test-only patient (numbered after the cohort's), scanner by scanner."""
    return [s for s in config.scanners for _ in range(s.extra_test_patients)]


def centroids(anatomy: Anatomy, affine: np.ndarray) -> list[dict[str, Any]]:
    """One VerSe-style centroid entry per vertebra, in voxel coordinates of ``affine``."""
    voxels = to_voxels(np.array([pose.center for pose in anatomy.poses]), affine)
    return [{"label": vertebra.label, "X": round(float(x), 3), "Y": round(float(y), 3),
             "Z": round(float(z), 3)}
            for vertebra, (x, y, z) in zip(anatomy.vertebrae, voxels, strict=True)]


def body_corners(anatomy: Anatomy, affine: np.ndarray) -> list[dict[str, Any]]:
    """The four corners of each vertebral body (sacrum excluded) on an AP projection whose
    pixels ``affine`` maps, AASCE style: label, corner (top = superior endplate, left =
    smaller X) and pixel coordinates X, Y."""
    points: list[dict[str, Any]] = []
    for vertebra, pose in zip(anatomy.vertebrae, anatomy.poses, strict=True):
        if vertebra.label == SACRUM:
            continue
        half_width = vertebra.a * pose.frame[:, 0]
        half_height = vertebra.height / 2 * pose.frame[:, 2]
        sides = (-half_width, half_width) if half_width[0] > 0 else (half_width, -half_width)
        for corner, (side, height) in zip(CORNERS, itertools.product(
                (half_height, -half_height), sides), strict=True):
            x, y, _ = to_voxels((pose.center + side + height)[None], affine)[0]
            points.append({"label": VERTEBRA_NAMES[vertebra.label], "corner": corner,
                           "X": round(float(x), 3), "Y": round(float(y), 3)})
    return points


def patient_labels(anatomy: Anatomy) -> dict[str, str]:
    """Manifest label columns for a patient: grades, stenosis, herniations, fractures, Cobb,
    osteoporosis."""
    row = {"cobb_angle": f"{anatomy.cobb:.2f}", "osteoporosis": str(anatomy.osteoporosis).lower()}
    for disc in anatomy.discs:
        row[f"pfirrmann_{_DISC_LEVEL[disc.upper]}"] = str(disc.grade)
        row[f"herniation_{_DISC_LEVEL[disc.upper]}"] = str(disc.herniation > 0).lower()
        if _DISC_LEVEL[disc.upper] in RSNA_LEVELS:
            row[f"spinal_canal_stenosis_{_DISC_LEVEL[disc.upper]}"] = str(anatomy.stenosis(disc))
    for vertebra in anatomy.vertebrae:
        if vertebra.label in _VERTEBRA:
            row[f"fracture_{_VERTEBRA[vertebra.label]}"] = str(vertebra.fracture)
    return row


def _write_3d(folder: Path, stem: str, image: np.ndarray, labels: np.ndarray, grid: Grid,
              anatomy: Anatomy, scanner: Scanner, dtype: type) -> tuple[str, str, str]:
    stored = reorient(Volume(image, grid.affine), scanner.orientation)
    mask = reorient(Volume(labels, grid.affine), scanner.orientation)
    save_nifti(stored, folder / f"{stem}.nii.gz", dtype)
    save_nifti(mask, folder / f"{stem}_mask.nii.gz", np.int16)
    write_points(centroids(anatomy, mask.affine), mask.affine, folder / f"{stem}_ctd.json")
    return f"{stem}.nii.gz", f"{stem}_mask.nii.gz", f"{stem}_ctd.json"


def _projection_volume(array: np.ndarray, grid: Grid, axis: int) -> Volume:
    """A 2D volume whose affine maps detector pixels to the two kept world axes."""
    kept = [i for i in range(3) if i != axis]
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for column, world in enumerate(kept):
        affine[world, column] = grid.spacing[world]
    affine[axis, 2] = 1.0
    affine[:3, 3] = grid.origin
    affine[axis, 3] = grid.origin[axis] + grid.spacing[axis] * grid.shape[axis] / 2
    return Volume(array, affine)


def render_patient(index: int, scanner: Scanner, config: CohortConfig,
                   folder: Path) -> list[dict[str, str]]:
    """Generate one patient's images at its scanner; return its manifest rows."""
    rng = np.random.default_rng([config.seed, index])
    anatomy = sample_anatomy(rng, config.anatomy)
    jitter = tuple(rng.uniform(-scanner.fov_jitter, scanner.fov_jitter, 2))
    spacing = scanner.spacing if scanner.modality != "XR" else (scanner.spacing[0],) * 3
    grid = grid_around(anatomy, spacing, scanner.fov, jitter)
    labels, tissue = rasterize(anatomy, grid)
    folder.mkdir(parents=True, exist_ok=True)
    shared = patient_labels(anatomy)
    rows = []

    def row(modality: str, sequence: str, view: str, files: tuple[str, str, str],
            spacing: tuple[float, ...]) -> None:
        image, mask, ctd = files
        rows.append({**shared, "modality": modality, "sequence": sequence, "view": view,
                     "series_id": f"{folder.name}-{scanner.name}-{sequence or view or modality}",
                     "image": f"{folder.name}/{image}", "mask": f"{folder.name}/{mask}",
                     "centroids": f"{folder.name}/{ctd}" if ctd else "",
                     "spacing": format_spacing(spacing)})

    if scanner.modality == "CT":
        ct = acquire(ct_hu(tissue, anatomy, rng), scanner.effects, rng)
        row("CT", "", "", _write_3d(folder, "ct", np.round(ct), labels, grid, anatomy, scanner,
                                    np.int16), scanner.spacing)
    elif scanner.modality == "MR":
        for sequence in scanner.sequences:
            signal = mr_signal(tissue, labels, anatomy, sequence, rng)
            mr = acquire(signal, scanner.effects, rng, rician=True)
            files = _write_3d(folder, sequence.lower(), np.round(mr), labels, grid, anatomy,
                              scanner, np.int16)
            row("MR", sequence, "", files, scanner.spacing)
    else:
        hu = ct_hu(tissue, anatomy, rng)
        for view in scanner.views:
            axis = 1 if view == "AP" else 0
            image, label_map = project(hu, labels, axis, grid.spacing[axis])
            image = acquire(image, scanner.effects, rng)
            stem = f"xr_{view.lower()}"
            projection = _projection_volume(image, grid, axis)
            save_nifti(projection, folder / f"{stem}.nii.gz", np.float32)
            save_nifti(_projection_volume(label_map, grid, axis), folder / f"{stem}_mask.nii.gz",
                       np.int16)
            detector = tuple(grid.spacing[i] for i in range(3) if i != axis)
            row("XR", "", view, (f"{stem}.nii.gz", f"{stem}_mask.nii.gz", ""), detector)
            if view == "AP":
                corners = body_corners(anatomy, projection.affine)
                write_points(corners, projection.affine, folder / f"{stem}_corners.json")
                rows[-1]["keypoints"] = f"{folder.name}/{stem}_corners.json"
    return rows


def generate(config: CohortConfig, out: Path, force: bool = False) -> Manifest:
    """Write the cohort under ``out`` and return its manifest.

    An ``out`` already holding this exact cohort is left as it is; one holding
    anything else is refused unless ``force``.
    """
    record = json.dumps({**config.raw, "generator": GENERATOR_VERSION}, indent=2,
                        sort_keys=True)
    manifest_path = out / "manifest.csv"
    with folder_lock(out):
        if run_files(out):
            previous = out / CONFIG_FILE
            same = (previous.is_file() and previous.read_text() == record
                    and manifest_path.is_file())
            if same and not force:
                return Manifest.load(manifest_path)
            if not force:
                raise OutputExistsError(
                    f"{out}: folder is not empty and holds a different (or unfinished) cohort; "
                    "choose another --out or pass --force to overwrite")
        sites = site_of_patients(config)
        splits = splits_of_patients(sites, config.split, config.seed)
        extra = test_only_sites(config)
        sites, splits = sites + extra, splits + ["test"] * len(extra)
        records = []
        for index in track(range(len(sites)), description="Generating phantoms"):
            patient = f"P{index + 1:04d}"
            scanner = sites[index]
            for row in render_patient(index, scanner, config, out / patient):
                records.append({"patient_id": patient, "study_id": f"{patient}-{scanner.name}",
                                "site": scanner.name, "source": "phantoms",
                                "split": splits[index], **row})
        manifest = from_records(records, out)
        manifest.save(manifest_path)
        write_text(out / CONFIG_FILE, record)  # last: it marks the cohort as complete
    return Manifest.load(manifest_path)
