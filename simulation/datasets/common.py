"""What every public-dataset adapter shares: the output layout, splits, masks, keypoints, reports.

An adapter reads a dataset as its users download it (``--root``) and writes
under ``--out``: ``manifest.csv`` (images referenced where they lie, by
absolute path; what is written under ``--out``, relative to the manifest),
``masks/`` (masks rewritten in the spinefl label convention), ``keypoints/``
(labelled points in voxel coordinates of their image), ``images/`` (only where
the source format is not NIfTI/MHA, e.g. DICOM or JPEG) and ``report.csv``
(every case, kept or skipped and why).
Nothing under ``--root`` is written to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.prepare import Item, write_report
from tasks.errors import UserError
from tasks.imageio import ImageError, Volume, load_image, save_nifti
from tasks.labels import structure_of
from tasks.manifest import from_records, split_of


class DatasetError(UserError):
    """The dataset folder is not laid out as the dataset ships (names the file or folder)."""


@dataclass
class Prepared:
    """What an adapter produced: manifest rows and report items."""

    out: Path
    rows: list[dict[str, str]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        """``path`` as the manifest names it: relative to the output folder (where the
        manifest lies) when inside it, else absolute (a dataset referenced where it lies; a
        manifest's relative paths never climb out of its folder)."""
        path, out = path.resolve(), self.out.resolve()
        return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)

    def skip(self, item: str, kind: str, reason: str, patient: str = "", files: int = 1) -> None:
        """Report a case that could not be used, and go on."""
        self.items.append(Item(item, kind, patient, files=files, reason=reason))

    def image_and_mask(self, item: str, kind: str, patient: str, image: Path, mask: Path
                       ) -> tuple[Volume, Volume] | None:
        """Both volumes of a labelled case; None (reported, skipped) when the mask is
        missing, either file is unreadable, or their grids differ."""
        if not mask.is_file():
            self.skip(item, kind, f"no mask {mask.name}", patient)
            return None
        try:
            volume, labels = load_image(image), load_image(mask)
        except ImageError as e:
            self.skip(item, kind, str(e), patient)
            return None
        if labels.array.shape != volume.array.shape:
            self.skip(item, kind, f"mask shape {labels.array.shape} differs from the image's "
                      f"{volume.array.shape}", patient)
            return None
        return volume, labels

    def keep(self, item: str, kind: str, row: dict[str, str], notes: str = "",
             files: int = 1) -> None:
        """Add a manifest row and report its case as kept."""
        self.rows.append(row)
        self.items.append(Item(item, kind, row["patient_id"], row["modality"], files, "kept",
                               notes, row["image"]))


def split_for(patient: str, official: str | None,
              carve: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> str:
    """The dataset's own split where it has one; otherwise drawn by a hash of the patient.

    ``carve`` gives the train/val/test fractions to draw from, e.g. (0.85, 0, 0.15)
    to take test patients out of a release that has training and validation sets only.
    """
    return official if official in ("train", "val", "test") else split_of(patient, carve)


def write_mask(mask: Volume, mapping: Callable[[int], int | None], path: Path) -> list[int]:
    """Map every label through ``mapping`` (None = background) and write int16 NIfTI.

    Returns the source values that had no spinefl label (they become background).
    """
    source = np.rint(mask.array).astype(np.int64)
    mapped = np.zeros(source.shape, np.int16)
    unmapped = []
    for value in np.unique(source):
        if value == 0:
            continue
        target = mapping(int(value))
        if target is None:
            unmapped.append(int(value))
            continue
        if structure_of(target) is None:
            raise ValueError(f"mapping gave {target}, not a spinefl label")
        mapped[source == value] = target
    save_nifti(Volume(mapped, mask.affine), path, np.int16)
    return unmapped


def finish(prepared: Prepared, name: str) -> Path:
    """Validate and write the manifest and the report; returns the manifest path."""
    out = prepared.out
    write_report(prepared.items, out / "report.csv")
    if not prepared.rows:
        raise DatasetError(f"{name}: no usable case found; see {out / 'report.csv'}")
    manifest = from_records(prepared.rows, out)
    problems = manifest.problems()
    if problems:
        raise DatasetError(f"{name}: prepared manifest is invalid: {problems[0]}")
    return manifest.save(out / "manifest.csv")

