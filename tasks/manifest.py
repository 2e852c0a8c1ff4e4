"""The manifest: one row per image, a fixed schema, validated on load.

Every data source (phantoms, public dataset adapters, a hospital's ingested
DICOM) writes a manifest; everything downstream reads manifests only. Paths
are relative to the manifest's folder. The full schema is documented in
``docs/manifest.md``; ``COLUMNS`` and ``COLUMN_FAMILIES`` below are its source.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.errors import UserError
from tasks.files import atomic, writable_folder
from tasks.imageio import ITK_SUFFIXES, NIFTI_SUFFIXES, ImageError, has_suffix, stored_shape

MODALITIES = ("CT", "MR", "XR")
SPLITS = ("train", "val", "test")
VIEWS = ("AP", "LAT")
DISC_LEVELS = ("t12_l1", "l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
VERTEBRAE = ("t12", "l1", "l2", "l3", "l4", "l5")
RSNA_CONDITIONS = ("spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                   "right_neural_foraminal_narrowing", "left_subarticular_stenosis",
                   "right_subarticular_stenosis")
_LEVELS = "|".join(DISC_LEVELS)
_RSNA_LEVELS = "|".join(DISC_LEVELS[1:])


class ManifestError(UserError):
    """A manifest breaks the schema; the message names the file, row and column."""


def _text(value: str) -> str | None:
    return None if value else "must not be empty"


def _choice(options: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in options else f"'{value}' is not one of {', '.join(options)}"

    return check


def _optional_choice(options: tuple[str, ...]) -> Callable[[str], str | None]:
    inner = _choice(options)
    return lambda value: None if value == "" else inner(value)


def parse_spacing(value: str) -> tuple[float, ...]:
    """'0.8x0.8x3' -> (0.8, 0.8, 3.0); raises ValueError unless 2 or 3 positive numbers."""
    parts = value.split("x")
    numbers = tuple(float(p) for p in parts)
    if len(numbers) not in (2, 3) or not all(n > 0 for n in numbers):
        raise ValueError(value)
    return numbers


def format_spacing(spacing: tuple[float, ...] | list[float]) -> str:
    """(0.8, 0.8, 3.0) -> '0.8x0.8x3'."""
    return "x".join(f"{s:g}" for s in spacing)


def _spacing(value: str) -> str | None:
    try:
        parse_spacing(value)
    except ValueError:
        return f"'{value}' is not a spacing like 0.8x0.8x3 (mm, 2 or 3 positive numbers)"
    return None


def _number_in(low: float, high: float, grade: bool = False) -> Callable[[str], str | None]:
    """A check of a number in [low, high]; with ``grade``, a whole number (a grade)."""
    def check(value: str) -> str | None:
        if value == "":
            return None
        try:
            number = float(value)
        except ValueError:
            return f"'{value}' is not a number"
        if not low <= number <= high:
            return f"{value} is outside [{low:g}, {high:g}]"
        return f"'{value}' is not a whole grade" if grade and not number.is_integer() else None

    return check


_BOOL = _optional_choice(("true", "false"))


@dataclass(frozen=True)
class Column:
    """A manifest column: its meaning and the check every value must pass."""

    help: str
    check: Callable[[str], str | None] | None = None
    required: bool = False
    is_path: bool = False


COLUMNS: dict[str, Column] = {
    "patient_id": Column("pseudonym of the patient, never a real identifier", _text, True),
    "study_id": Column("study (imaging session) identifier, pseudonymised", _text, True),
    "series_id": Column("series identifier, pseudonymised", _text, True),
    "modality": Column("CT, MR or XR", _choice(MODALITIES), True),
    "sequence": Column("MR sequence (T1, T2, ...); empty for CT and XR", None, True),
    "image": Column("image file (NIfTI or MHA), relative to the manifest", _text, True, True),
    "spacing": Column("voxel spacing in mm, e.g. 0.8x0.8x3 (2 numbers for XR)", _spacing, True),
    "site": Column("natural hospital, centre or scanner the image comes from", _text, True),
    "source": Column("dataset name (phantoms, verse, spider, a hospital's name)", _text, True),
    "split": Column("train, val or test; fixed per patient", _choice(SPLITS), True),
    "mask": Column("label mask in the spinefl convention, relative path", is_path=True),
    "centroids": Column("VerSe-style centroid JSON, relative path", is_path=True),
    "view": Column("radiograph view: AP or LAT; empty for 3D images", _optional_choice(VIEWS)),
    "keypoints": Column("JSON list of labelled points in voxel coordinates of the image "
                        "(RSNA condition points, AASCE vertebra corners), relative path",
                        is_path=True),
    "cobb_angle": Column("largest Cobb angle in degrees", _number_in(0, 120)),
    "cobb_pt": Column("proximal thoracic Cobb angle in degrees (AASCE)", _number_in(0, 120)),
    "cobb_mt": Column("main thoracic Cobb angle in degrees (AASCE)", _number_in(0, 120)),
    "cobb_tl": Column("thoracolumbar/lumbar Cobb angle in degrees (AASCE)",
                      _number_in(0, 120)),
    "osteoporosis": Column("true or false", _BOOL),
}

# Families of per-level label columns: name pattern -> column description.
COLUMN_FAMILIES: dict[str, Column] = {
    rf"pfirrmann_({_LEVELS})": Column(
        "Pfirrmann-like degeneration grade 1-5 of the disc at that level",
        _number_in(1, 5, grade=True)),
    rf"herniation_({_LEVELS})": Column(
        "true when the disc at that level herniates posteriorly", _BOOL
    ),
    rf"modic_({_LEVELS})": Column("Modic change at that level: 0 none, 1-3 type I-III",
                                  _number_in(0, 3, grade=True)),
    rf"narrowing_({_LEVELS})": Column("true when the disc at that level is narrowed", _BOOL),
    rf"bulging_({_LEVELS})": Column("true when the disc at that level bulges", _BOOL),
    **{rf"{condition}_({_RSNA_LEVELS})": Column(
        f"{condition.replace('_', ' ')} at that level as RSNA 2024 grades it: 0 normal/mild, "
        "1 moderate, 2 severe", _number_in(0, 2, grade=True)) for condition in RSNA_CONDITIONS},
    rf"fracture_({'|'.join(VERTEBRAE)})": Column(
        "Genant grade 0-3 of a vertebral compression fracture", _number_in(0, 3, grade=True)),
}


def manifest_markdown() -> str:
    """The manifest schema as a Markdown table (the source of docs/manifest.md)."""
    lines = ["| column | required | meaning |", "| --- | --- | --- |"]
    for name, column in COLUMNS.items():
        lines.append(f"| `{name}` | {'yes' if column.required else ''} | {column.help} |")
    for pattern, column in COLUMN_FAMILIES.items():
        family = pattern.split("(")[0]
        levels = pattern.split("(")[1].rstrip(")").replace("|", ", ")
        lines.append(f"| `{family}<level>` ({levels}) | | {column.help} |")
    return "\n".join(lines) + "\n"


def column_spec(name: str) -> Column | None:
    """The schema entry of a column name, or None for a column the schema does not know."""
    if name in COLUMNS:
        return COLUMNS[name]
    for pattern, column in COLUMN_FAMILIES.items():
        if re.fullmatch(pattern, name):
            return column
    return None


@dataclass
class Manifest:
    """A validated manifest table and the folder its paths are relative to."""

    table: pd.DataFrame
    root: Path

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        """Read and validate a CSV or Parquet manifest; raise ManifestError naming every problem."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"{path}: manifest not found")
        try:
            if path.suffix == ".parquet":
                table = pd.read_parquet(path).astype(str).replace({"nan": "", "None": ""})
            else:
                table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (ValueError, OSError, ImportError) as e:
            raise ManifestError(f"{path}: cannot read manifest ({e})") from None
        manifest = cls(table, path.parent)
        problems = manifest.problems()
        if problems:
            shown = "\n".join(f"{path}: {p}" for p in problems[:20])
            more = f"\n{path}: ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ManifestError(shown + more)
        return manifest

    def problems(self) -> list[str]:
        """Every schema violation, each naming its row (1-based) and column."""
        found: list[str] = []
        table = self.table
        missing = [n for n, c in COLUMNS.items() if c.required and n not in table.columns]
        found += [f"missing column '{n}' ({COLUMNS[n].help})" for n in missing]
        specs = {name: column_spec(name) for name in table.columns}
        found += [f"unknown column '{n}'" for n, spec in specs.items() if spec is None]
        if missing or len(table) == 0:
            return found + (["manifest has no rows"] if len(table) == 0 else [])
        for i, values in enumerate(table.to_dict("records"), start=1):
            for name, spec in specs.items():
                if spec is None:
                    continue
                value = values[name]
                where = f"row {i} (patient '{values['patient_id']}'), column '{name}'"
                problem = spec.check(value) if spec.check is not None else None
                if problem is None and spec.is_path and value:
                    problem = self._path_problem(value)
                if problem:
                    found.append(f"{where}: {problem}")
            if values.get("mask") and values["mask"] == values["image"]:
                found.append(f"row {i} (patient '{values['patient_id']}'), column 'mask': the "
                             "image itself, not a label mask")
            if not has_suffix(Path(values["image"]), NIFTI_SUFFIXES + ITK_SUFFIXES):
                found.append(f"row {i} (patient '{values['patient_id']}'), column 'image': "
                             f"{values['image']} is not a NIfTI or MHA file")
            if values["modality"] == "MR" and not values["sequence"]:
                found.append(f"row {i} (patient '{values['patient_id']}'), column 'sequence': "
                             "MR images need a sequence (T1, T2, ...)")
        splits = table.groupby("patient_id")["split"].unique()
        for patient, in_splits in splits.items():
            if len(in_splits) > 1:
                first_row = {s: table.index[(table.patient_id == patient) & (table.split == s)][0]
                             for s in in_splits}
                rows = [f"{s} (row {first_row[s] + 1})" for s in in_splits]
                found.append(f"patient '{patient}' is in more than one split: {', '.join(rows)}")
        duplicated = table[table.duplicated("image", keep="first")]
        found += [f"row {i + 1}, column 'image': listed twice ({v})"
                  for i, v in duplicated.image.items()]
        return found

    def _path_problem(self, value: str) -> str | None:
        """What is wrong with a path column's value: a relative path climbing out of the
        manifest's folder (absolute paths are taken as given), or no such file."""
        if not Path(value).is_absolute() and os.path.normpath(value).split(os.sep)[0] == "..":
            return (f"{value} lies outside the manifest's folder; give a path inside it "
                    "(or an absolute one)")
        if not (self.root / value).is_file():
            return f"file not found: {self.root / value}"
        return None

    def check_geometry(self, where: Path | str) -> None:
        """Raise ManifestError (naming ``where``, the manifest) when a mask does not lie on
        its image's grid."""
        problems = self.geometry_problems()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ManifestError(f"{where}: {problems[0]}{more}")

    def geometry_problems(self) -> list[str]:
        """Rows whose mask does not lie on its image's grid (shapes from the headers), each
        naming its row, patient and both files."""
        found: list[str] = []
        if "mask" not in self.table:
            return found
        for i, values in enumerate(self.table.to_dict("records"), start=1):
            if not values["mask"]:
                continue
            image, mask = self.root / values["image"], self.root / values["mask"]
            try:
                shapes = stored_shape(image), stored_shape(mask)
            except ImageError as e:
                found.append(f"row {i} (patient '{values['patient_id']}'): {e}")
                continue
            if shapes[0] != shapes[1]:
                found.append(f"row {i} (patient '{values['patient_id']}'): mask {mask} has "
                             f"shape {shapes[1]}, its image {image} {shapes[0]}")
        return found

    def save(self, path: Path | str) -> Path:
        """Write the table as CSV (or Parquet by suffix); paths stay relative to its folder."""
        path = Path(path)
        writable_folder(path.parent)
        with atomic(path) as temporary:
            if path.suffix == ".parquet":
                self.table.to_parquet(temporary, index=False)
            else:
                self.table.to_csv(temporary, index=False)
        return path

    def path(self, row: pd.Series, column: str = "image") -> Path:
        """Absolute path of a row's file column."""
        return self.root / row[column]

    def path_columns(self) -> list[str]:
        """The columns that name files (image, mask, centroids, ...)."""
        return [name for name in self.table.columns
                if (spec := column_spec(name)) is not None and spec.is_path]

    def with_absolute_paths(self, root: Path) -> Manifest:
        """The same rows with every file column absolute, to be saved under another ``root``."""
        table = self.table.copy()
        for name in self.path_columns():
            table[name] = [str((self.root / v).resolve()) if v else "" for v in table[name]]
        return Manifest(table, root)

    def select(self, **equals: str | tuple[str, ...]) -> Manifest:
        """Rows whose columns equal (or are among) the given values: ``select(split="train")``."""
        keep = pd.Series(True, index=self.table.index)
        for column, wanted in equals.items():
            options = (wanted,) if isinstance(wanted, str) else tuple(wanted)
            keep &= self.table[column].isin(options)
        return Manifest(self.table[keep].reset_index(drop=True), self.root)

    def __len__(self) -> int:
        return len(self.table)

    def rows(self) -> list[pd.Series]:
        """The rows, in order."""
        return [row for _, row in self.table.iterrows()]


def split_of(patient_id: str, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> str:
    """The split of a patient, from a hash of its pseudonym: stable when patients are added.

    A patient never moves between train, val and test from one preparation to
    the next, whatever else the dataset gains or loses.
    """
    draw = int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:8], "big") / 2**64
    train, val, _ = fractions
    return "train" if draw < train else "val" if draw < train + val else "test"


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15); raises UserError unless 3 non-negative, sum 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise UserError(f"split '{text}': give train,val,test fractions summing to 1, "
                        "e.g. 0.7,0.15,0.15")
    return values  # type: ignore[return-value]


def from_records(records: list[dict[str, str]], root: Path) -> Manifest:
    """Build a manifest from row dicts (missing optional columns become empty)."""
    table = pd.DataFrame.from_records(records).fillna("").astype(str)
    core = [c for c in COLUMNS if c in table.columns]
    return Manifest(table[core + sorted(set(table.columns) - set(core))], root)
