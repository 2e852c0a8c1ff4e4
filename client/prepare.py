"""`spinefl hospital prepare`: a PACS export or NIfTI/MHA folder into a de-identified dataset.

Stages, each visible under ``--out``:

1. scan: every file under the input is read once, headers only (pixels stay
   on disk), and DICOM files are grouped into series (the patient is the
   header's PatientID); other files are NIfTI/MHA images (the patient is the
   folder holding the file, or the file's name when it lies at the top),
   their masks (``*_seg``, ``*_mask``, ``*_msk``, ``*_label(s)``) and
   VerSe-style centroid files (``*_ctd.json``), or reported as passed over;
2. judge: a series is kept or skipped with a reason (scouts, reports, dose
   objects, undecodable compression, burned-in annotations, ...);
3. convert: a kept series becomes one NIfTI volume in ``images/<patient>/``
   (CT in HU, MR and X-ray in their own units, geometry from the headers),
   with its mask and centroids where given beside it;
4. write: ``manifest.csv`` (pseudonyms only), ``report.csv`` (every series and
   passed-over file, with what happened and why, named by a pseudonym of its input
   path), ``dicom/`` with DICOM de-identified after the hospital's profile when asked
   (``profile.toml`` records the profile used).

The input is only ever read; every file is written atomically. The pseudonym
key is created in ``.spinefl/pseudonym.key`` on the first run into an empty
folder, or elsewhere only with ``--new-key`` (a mistyped ``--key`` is refused,
never silently replaced by a new key). ``.spinefl/done.json`` lets a second
run skip series that have not changed (a damaged one is rebuilt), and keeps in
the manifest the series an earlier export added. Nothing outside ``.spinefl`` names an
input file (folder names often hold patient names): ``.spinefl/sources.csv`` maps each
report item to its input path so that staff can find it; like the key, it stays at the
hospital.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress

from client.confidentiality import Profile, table
from client.deidentify import RULES_VERSION, deidentify
from client.dicom import (
    DICOM_MODALITIES,
    DicomFile,
    SeriesError,
    build_volume,
    group_series,
    read_header,
    series_problem,
)
from client.pseudonyms import PseudonymKey
from tasks.errors import UserError
from tasks.files import atomic, writable_folder, write_table, write_text
from tasks.imageio import (
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    ImageError,
    Volume,
    has_suffix,
    load_image,
    modality_in_name,
    save_nifti,
)
from tasks.imageio import reorient as reorient_volume
from tasks.labels import structure_of
from tasks.locks import folder_lock
from tasks.manifest import format_spacing, from_records, split_of
from tasks.points import centroids_text

STATE_DIR = ".spinefl"
KEY_FILE = "pseudonym.key"
DONE_FILE = "done.json"
SOURCES_FILE = "sources.csv"
PROFILE_FILE = "profile.toml"
HIDDEN = "<input name>"
MASK_NAME = re.compile(r"^(?P<stem>.+)_(seg|mask|msk|labels?)$", re.IGNORECASE)
CENTROIDS_SUFFIX = "_ctd.json"


@dataclass(frozen=True)
class PrepareOptions:
    """What the user asked for."""

    input: Path
    out: Path
    name: str
    key_file: Path | None = None
    new_key: bool = False
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    write_dicom: bool = False
    allow_burned_in: bool = False
    modality: str | None = None
    profile: Profile = field(default_factory=Profile)


@dataclass
class Item:
    """One report row: a series or a file, and what happened to it."""

    item: str
    kind: str
    patient: str = ""
    modality: str = ""
    files: int = 0
    status: str = "skipped"
    reason: str = ""
    output: str = ""


@dataclass
class Scan:
    """What the input holds, by kind (no pixels read)."""

    series: dict[str, list[DicomFile]] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    masks: dict[tuple[Path, str], Path] = field(default_factory=dict)
    centroids: dict[tuple[Path, str], Path] = field(default_factory=dict)
    passed_over: list[Item] = field(default_factory=list)


@dataclass
class PrepareResult:
    """Where the outputs went and the report rows."""

    manifest: Path | None
    report: Path
    items: list[Item]


def _stem(path: Path) -> str:
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES):
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def scan(options: PrepareOptions, progress: Progress) -> Scan:
    """Walk the input once: DICOM headers grouped by series, image and mask files, the rest."""
    found = Scan()
    files = sorted(p for p in options.input.rglob("*") if p.is_file())
    headers: list[DicomFile] = []
    for path in progress.track(files, description="Reading headers"):
        relative = str(path.relative_to(options.input))
        if has_suffix(path, NIFTI_SUFFIXES + ITK_SUFFIXES):
            match = MASK_NAME.match(_stem(path))
            if match:
                found.masks[(path.parent, match["stem"])] = path
            else:
                found.images.append(path)
            continue
        if path.name.endswith(CENTROIDS_SUFFIX):
            found.centroids[(path.parent, path.name[: -len(CENTROIDS_SUFFIX)])] = path
            continue
        try:
            headers.append(read_header(path))
        except ImageError as e:
            found.passed_over.append(Item(relative, "file", files=1,
                                          reason=str(e).removeprefix(f"{path}: ")))
    found.series = group_series(headers)
    return found


class Preparer:
    """Turns what a scan found into de-identified NIfTI volumes, manifest rows and report rows."""

    def __init__(self, options: PrepareOptions, key: PseudonymKey, done: dict) -> None:
        self.options = options
        self.key = key
        self.done = done
        self.rows: list[dict[str, str]] = []
        self.items: list[Item] = []
        self.new_done: dict[str, dict] = {}
        # Input paths (relative) behind each report item, whose names the report hides.
        self.inputs: dict[str, list[str]] = {}
        # What the written DICOM depends on: a series whose DICOM was written under other
        # rules, table or options is converted again rather than left behind.
        self.dicom = (f"{RULES_VERSION} {table().sha256} {','.join(options.profile.options)}"
                      if options.write_dicom else "")

    # -- identities ---------------------------------------------------------------------
    def patient(self, raw: str) -> str:
        return self.key.pseudonym("patient", raw, "P")

    def _row(self, patient: str, study: str, series: str, volume: Volume, modality: str,
             sequence: str, view: str, image: str, mask: str) -> dict[str, str]:
        return {"patient_id": patient, "study_id": study, "series_id": series,
                "modality": modality, "sequence": sequence, "image": image,
                "spacing": format_spacing(volume.spacing), "site": self.options.name,
                "source": self.options.name, "split": split_of(patient, self.options.split),
                "mask": mask, "view": view, "centroids": ""}

    def _reuse(self, series: str, fingerprint: str, item: Item, dicom: bool = False) -> bool:
        """Whether an earlier run prepared ``series`` from the same files (and, for a DICOM
        series when --dicom is given, wrote its DICOM as this run would)."""
        previous = self.done.get(series)
        if not previous or previous["fingerprint"] != fingerprint:
            return False
        if dicom and self.dicom and previous.get("dicom") != self.dicom:
            return False
        if not self._on_disk(previous["row"]):
            return False
        self.rows.append(previous["row"])
        self.new_done[series] = previous
        item.status, item.output = "unchanged", previous["row"]["image"]
        item.reason = "prepared by an earlier run; files unchanged"
        return True

    def _write(self, series: str, fingerprint: str, item: Item, volume: Volume,
               mask: Volume | None, identity: tuple[str, str], modality: str, sequence: str,
               view: str, centroids: str = "") -> dict[str, str]:
        patient, study = identity
        image = f"images/{patient}/{series}.nii.gz"
        save_nifti(volume, self.options.out / image,
                   np.int16 if modality == "CT" else np.float32)
        mask_path = ""
        if mask is not None:
            mask_path = f"images/{patient}/{series}_mask.nii.gz"
            save_nifti(mask, self.options.out / mask_path, np.int16)
        row = self._row(patient, study, series, volume, modality, sequence, view, image,
                        mask_path)
        if centroids:
            row["centroids"] = f"images/{patient}/{series}{CENTROIDS_SUFFIX}"
            write_text(self.options.out / row["centroids"], centroids)
        self.rows.append(row)
        self.new_done[series] = {"fingerprint": fingerprint, "row": row}
        item.status, item.output = "kept", image
        return row

    # -- DICOM series -------------------------------------------------------------------
    def dicom_series(self, uid: str, files: list[DicomFile], mask_file: Path | None) -> Item:
        first = files[0]
        folder = _common_folder([f.path for f in files])
        raw_patient = first.patient_id or f"study:{first.study_uid}"
        patient = self.patient(raw_patient)
        study = self.key.pseudonym("study", first.study_uid, "S")
        series = self.key.pseudonym("series", uid, "E")
        where = files[0].path if len(files) == 1 else folder
        item = Item(self._relative(where), "DICOM series", patient,
                    DICOM_MODALITIES.get(first.modality, first.modality), len(files))
        self.inputs[item.item] = [self._relative(f.path) for f in files] + (
            [self._relative(mask_file)] if mask_file else [])
        problem = series_problem(files)
        burned_in = any(f.burned_in == "YES" for f in files)
        if problem is None and burned_in and not self.options.allow_burned_in:
            problem = ("burned-in annotation (the pixels may show identifying text); "
                       "--allow-burned-in keeps such images")
        if problem:
            item.reason = problem
            return item
        fingerprint = _fingerprint([f.path for f in files] + ([mask_file] if mask_file else []))
        if self._reuse(series, fingerprint, item, dicom=True):
            return item
        try:
            built = build_volume(files)
        except SeriesError as e:
            item.reason = str(e)
            return item
        notes = list(built.notes)
        if not first.patient_id:
            notes.append("no PatientID: the study stands for the patient")
        mask = self._mask(mask_file, built.volume, notes)
        modality = DICOM_MODALITIES[first.modality]
        sequence = (first.sequence_hint or "unknown") if modality == "MR" else ""
        self._write(series, fingerprint, item, built.volume, mask, (patient, study), modality,
                    sequence, first.view)
        if self.options.write_dicom:
            self._write_dicom(built.files, patient, study, series)
            self.new_done[series]["dicom"] = self.dicom
        item.reason = "; ".join(notes)
        return item

    def _write_dicom(self, files: list[Path], patient: str, study: str, series: str) -> None:
        import pydicom

        folder = self.options.out / "dicom" / patient / study / series
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            ds = pydicom.dcmread(path)
            deidentify(ds, self.key, patient, self.options.profile)
            with atomic(folder / f"{ds.SOPInstanceUID}.dcm") as temporary:
                ds.save_as(temporary, enforce_file_format=True)

    # -- NIfTI / MHA files ----------------------------------------------------------------
    def image_file(self, path: Path, mask_file: Path | None,
                   centroids_file: Path | None = None) -> Item:
        relative = path.relative_to(self.options.input)
        raw_patient = relative.parent.name if len(relative.parts) > 1 else _stem(path)
        patient = self.patient(raw_patient)
        kind = "NIfTI" if has_suffix(path, NIFTI_SUFFIXES) else "MetaImage"
        item = Item(str(relative), kind, patient, files=1)
        self.inputs[item.item] = [str(relative)] + [
            self._relative(f) for f in (mask_file, centroids_file) if f]
        series = self.key.pseudonym("series", str(relative), "E")
        study = self.key.pseudonym("study", str(relative.parent), "S")
        fingerprint = _fingerprint([path] + [f for f in (mask_file, centroids_file) if f])
        if self._reuse(series, fingerprint, item):
            item.modality = self.done[series]["row"]["modality"]
            return item
        try:
            volume = load_image(path)
        except ImageError as e:
            item.reason = str(e).removeprefix(f"{path}: ")
            return item
        modality, sequence = self._modality_of(relative, volume)
        item.modality = modality
        if not modality:
            item.reason = ("cannot tell the modality from the file name (ct, mr, t1, t2, xr "
                           "...); give --modality")
            return item
        if (modality == "XR") != volume.is_projection:
            item.reason = f"{modality} image with {volume.array.ndim} dimensions"
            return item
        notes: list[str] = []
        mask = self._mask(mask_file, volume, notes)
        centroids = ""
        if centroids_file is not None:
            try:
                centroids = centroids_text(centroids_file)
            except UserError as e:
                notes.append(f"centroids {centroids_file.name} not used: "
                             f"{str(e).removeprefix(f'{centroids_file}: ')}")
        self._write(series, fingerprint, item, volume, mask, (patient, study), modality,
                    (sequence or "unknown") if modality == "MR" else "", "", centroids)
        item.reason = "; ".join(notes)
        return item

    def _modality_of(self, relative: Path, volume: Volume) -> tuple[str, str]:
        if self.options.modality:
            return self.options.modality, ""
        modality, sequence = modality_in_name(relative)
        if not modality and volume.is_projection:
            modality = "XR"
        return modality, sequence

    # -- masks ------------------------------------------------------------------------------
    def _mask(self, path: Path | None, image: Volume, notes: list[str]) -> Volume | None:
        """The mask on the image's grid, or None with the reason in ``notes``."""
        if path is None:
            return None
        name = path.name
        try:
            mask = load_image(path)
        except ImageError as e:
            notes.append(f"mask {name} not used: {str(e).removeprefix(f'{path}: ')}")
            return None
        if mask.array.ndim == 3 and image.array.ndim == 3:
            import nibabel as nib

            mask = reorient_volume(mask, "".join(nib.aff2axcodes(image.affine)))
        if mask.array.shape != image.array.shape or not np.allclose(
                mask.affine, image.affine, atol=1e-2 * max(image.spacing)):
            notes.append(f"mask {name} not used: its grid {mask.array.shape} does not match "
                         f"the image's {image.array.shape}")
            return None
        values = np.unique(mask.array)
        bad = [v for v in values if v != 0 and (v != int(v) or structure_of(int(v)) is None)]
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad[:5])
            notes.append(f"mask {name} not used: values {shown} are not in the spinefl label "
                         "convention (docs/manifest.md)")
            return None
        return Volume(np.rint(mask.array).astype(np.int16), image.affine)

    def _on_disk(self, row: dict[str, str]) -> bool:
        """Whether every file a manifest row of an earlier run names is still there."""
        files = [row.get(column, "") for column in ("image", "mask", "centroids")]
        return all((self.options.out / path).exists() for path in files if path)

    def keep_earlier(self) -> int:
        """Keep the series earlier runs prepared that this run's input does not hold (another
        export into the same folder adds to the dataset); how many were kept."""
        kept = 0
        for series, previous in self.done.items():
            if series not in self.new_done and self._on_disk(previous["row"]):
                self.rows.append(previous["row"])
                self.new_done[series] = previous
                kept += 1
        return kept

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.options.input)) or "."


def _common_folder(paths: Iterable[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        info = path.stat()
        digest.update(f"{path}|{info.st_size}|{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def write_report(items: list[Item], path: Path) -> Path:
    """The report as CSV: one row per series or file, with what happened and why."""
    return write_table(pd.DataFrame([asdict(i) for i in items],
                                    columns=list(Item.__dataclass_fields__)), path)


def write_deidentified_report(items: list[Item], inputs: dict[str, list[str]],
                              key: PseudonymKey, root: Path, out: Path) -> Path:
    """``report.csv`` naming each item by a keyed pseudonym of its input path, with the
    names of its input files (and any path under the input ``root``) hidden in the
    reasons; ``.spinefl/sources.csv`` maps the pseudonyms back to the input paths (and the
    reasons as they were)."""
    shared, sources = [], []
    for item in items:
        name = key.pseudonym("input", item.item, "I")
        sources.append({"item": name, "source": item.item, "reason": item.reason})
        shared.append(Item(**{**asdict(item), "item": name,
                              "reason": _hidden(item.reason, root,
                                                inputs.get(item.item, [item.item]))}))
    write_table(pd.DataFrame(sources, columns=["item", "source", "reason"]),
                out / STATE_DIR / SOURCES_FILE)
    return write_report(shared, out / "report.csv")


def _hidden(text: str, root: Path, files: list[str]) -> str:
    """``text`` with the item's input paths (absolute or relative, whole or their folders),
    its files' names and any other path under ``root`` replaced. Reasons name files, and
    folders only within a path (a library's message quoting one)."""
    paths: set[str] = set()
    for base in {str(root), str(root.resolve())}:
        for relative in files:
            paths.update(str(Path(base) / q) for q in (Path(relative), *Path(relative).parents)
                         if q != Path("."))
    for relative in files:
        paths.update(str(q) for q in (Path(relative), *Path(relative).parents) if len(q.parts) > 1)
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, HIDDEN)
    for name in sorted({Path(path).name for path in files}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", HIDDEN, text)
    for base in {str(root), str(root.resolve())}:  # another path under the input: all of
        text = re.sub(re.escape(base) + r"[^)'\"]*", HIDDEN, text)  # it, spaces too
    return text


def write_profile(profile: Profile, path: Path) -> Path:
    """The profile used for the written DICOM, as the file it came from would read, with the
    table, its checksum and the time."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return write_text(path, f"# Used by spinefl hospital prepare at {stamp}, from "
                            f"{profile.source}; table sha256 {table().sha256}.\n"
                      + profile.text())


def check_folders(source: Path, out: Path) -> None:
    """Refuse an input that is not a folder, and an output inside (or around) the input:
    what the user gave is only ever read."""
    if not source.is_dir():
        raise UserError(f"{source}: input folder not found")
    source_path, out_path = source.resolve(), out.resolve()
    if out_path == source_path or source_path in out_path.parents:
        raise UserError(f"{out}: the output folder must not be inside the input "
                        f"{source} (the input is never written to)")
    if out_path in source_path.parents:
        raise UserError(f"{out}: the output folder must not contain the input")


def prepare(options: PrepareOptions, console: Console | None = None) -> PrepareResult:
    """Run every stage; the report lists every series and passed-over file. Series that an
    earlier run into the same folder prepared from another export stay in the manifest."""
    console = console or Console()
    check_folders(options.input, options.out)
    with folder_lock(options.out):
        return _prepare(options, console)


def open_key(options: PrepareOptions) -> PseudonymKey:
    """The pseudonym key; created only when asked (``--new-key``) or on the first run into
    an empty output folder with the default key path."""
    path = options.key_file or options.out / STATE_DIR / KEY_FILE
    first_run = options.key_file is None and not (options.out / "manifest.csv").exists()
    hint = ("; pass --new-key to create one (the patients of a dataset prepared with another "
            "key would get new pseudonyms)")
    return PseudonymKey.load_or_create(path, options.new_key or first_run, hint)


def read_state(path: Path, console: Console) -> dict[str, Any]:
    """What earlier runs prepared (``done.json``); a damaged file is reported and rebuilt
    (its series are converted again)."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict) and all(
                isinstance(v, dict) and {"fingerprint", "row"} <= set(v) for v in state.values()):
            return state
    except (OSError, ValueError):
        pass
    console.print(f"[yellow]warning:[/] {path}: damaged (an interrupted run?); it is rebuilt "
                  "and every series converted again")
    return {}


def _prepare(options: PrepareOptions, console: Console) -> PrepareResult:
    state = options.out / STATE_DIR
    key = open_key(options)
    done_path = state / DONE_FILE
    done = read_state(done_path, console)
    preparer = Preparer(options, key, done)
    with Progress(console=console, transient=True) as progress:
        found = scan(options, progress)
        by_folder: dict[Path, list[str]] = defaultdict(list)
        for uid, files in found.series.items():
            for folder in {f.path.parent for f in files}:
                by_folder[folder].append(uid)
        masks_in: dict[Path, list[Path]] = defaultdict(list)
        for (where, _), path in found.masks.items():
            masks_in[where].append(path)
        used: set[Path] = set()
        for uid, files in progress.track(list(found.series.items()),
                                         description="Converting series"):
            folder = _common_folder([f.path for f in files])
            masks = masks_in.get(folder, [])
            mask = masks[0] if len(masks) == 1 and by_folder[folder] == [uid] else None
            used.update([mask] if mask else [])
            preparer.items.append(preparer.dicom_series(uid, files, mask))
        for path in progress.track(found.images, description="Converting images"):
            mask = found.masks.get((path.parent, _stem(path)))
            centroids = found.centroids.get((path.parent, _stem(path)))
            used.update(f for f in (mask, centroids) if f)
            preparer.items.append(preparer.image_file(path, mask, centroids))
    for path in sorted(set(found.masks.values()) - used):
        preparer.items.append(Item(str(path.relative_to(options.input)), "mask", files=1,
                                   reason="mask without an image it belongs to (name it "
                                   "<image>_mask beside the image, or put it in the folder "
                                   "of one DICOM series)"))
    for path in sorted(set(found.centroids.values()) - used):
        preparer.items.append(Item(str(path.relative_to(options.input)), "centroids", files=1,
                                   reason="centroids without an image they belong to (name "
                                   f"them <image>{CENTROIDS_SUFFIX} beside the image)"))
    preparer.items.extend(found.passed_over)
    kept = preparer.keep_earlier()
    writable_folder(state)
    state.chmod(0o700)  # the key and the input paths (sources.csv) are for staff only
    write_text(done_path, json.dumps(preparer.new_done, indent=1))
    report = write_deidentified_report(preparer.items, preparer.inputs, key, options.input,
                                       options.out)
    if options.write_dicom:
        write_profile(options.profile, options.out / PROFILE_FILE)
    if kept:
        console.print(f"Kept {kept} series prepared by earlier runs from other exports")
    if not preparer.rows:
        return PrepareResult(None, report, preparer.items)
    manifest = from_records(preparer.rows, options.out)
    problems = manifest.problems()
    if problems:
        raise UserError(f"{options.out}: prepared manifest is invalid: {problems[0]}")
    path = manifest.save(options.out / "manifest.csv")
    return PrepareResult(path, report, preparer.items)
