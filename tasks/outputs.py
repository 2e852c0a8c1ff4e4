"""What a task's prediction writes: a mask with its input's geometry, or a JSON record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.files import write_text
from tasks.imageio import Volume, save_nifti


@dataclass
class MaskOutput:
    """A predicted label map on the input's grid (integers written as int16)."""

    volume: Volume

    def save(self, path: Path) -> None:
        kind = self.volume.array.dtype.kind
        save_nifti(self.volume, path, np.int16 if kind in "iu" else None)


@dataclass(frozen=True)
class Finding:
    """One finding of a record as a measurement report holds it: its site (a name of the
    label convention, e.g. 'L4/L5', or 'spine'), measured values (name, value, UCUM unit)
    and graded ones (name, grade word)."""

    site: str
    measurements: tuple[tuple[str, float, str], ...] = ()
    evaluations: tuple[tuple[str, str], ...] = ()


@dataclass
class RecordOutput:
    """A predicted record (centroid list, grades, angles) written as JSON, with what a person
    checking it should see over the image: labelled points (voxel coordinates ``X``, ``Y``,
    ``Z`` of the input, ``label`` a convention value or a word) and a caption; and its
    ``findings`` where the record reports measurements or grades (a DICOM SR's content)."""

    record: Any
    points: list[dict[str, Any]] = field(default_factory=list)
    caption: str = ""
    findings: list[Finding] = field(default_factory=list)

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(self.record, indent=1))
