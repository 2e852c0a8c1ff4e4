"""Which label values form which class, and what a predicted class is written as."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.labels import CANAL, STRUCTURES, disc_label, label_name, structure_of

LEVEL_VERTEBRAE = (19, 20, 21, 22, 23, 24, 26)
# T1-T12, L1-L5 and the sacrum: the vertebrae a labelling model names.
NAMED_VERTEBRAE = (*range(8, 25), 26)


@dataclass(frozen=True)
class ClassTable:
    """Classes of a segmentation model: names, the value each is written as, its structure.

    Class 0 is background. ``lookup`` maps every label value of the spinefl
    convention (0-255) to its class; values without a class become background.
    """

    names: tuple[str, ...]
    values: tuple[int, ...]
    structures: tuple[str, ...]
    lookup: np.ndarray

    @property
    def count(self) -> int:
        return len(self.names)

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        """Label values -> class indices."""
        return self.lookup[np.clip(labels, 0, len(self.lookup) - 1).astype(np.int64)]

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """Class indices -> the values written to predicted masks."""
        return np.asarray(self.values, dtype=np.int16)[classes]

    def from_values(self, written: np.ndarray) -> np.ndarray:
        """Values of a predicted mask (see ``to_values``) -> class indices."""
        inverse = np.zeros(max(self.values) + 1, dtype=np.int64)
        inverse[list(self.values)] = np.arange(self.count)
        return inverse[written.astype(np.int64)]


def class_table(scheme: str) -> ClassTable:
    """The class table of a label scheme: 'structures' (vertebra, disc, canal), 'levels' (every
    vertebra and disc level T12-S plus the canal) or 'vertebrae' (T1-L5 and the sacrum)."""
    lookup = np.zeros(256, dtype=np.int64)
    if scheme == "structures":
        for value in range(1, 256):
            structure = structure_of(value)
            if structure is not None:
                lookup[value] = STRUCTURES.index(structure) + 1
        names = ("background", *STRUCTURES)
        return ClassTable(names, (0, 1, 2, 3), names, lookup)
    if scheme == "vertebrae":
        values: tuple[int, ...] = NAMED_VERTEBRAE
    else:
        values = (*LEVEL_VERTEBRAE, *(disc_label(v) for v in LEVEL_VERTEBRAE[:-1]), CANAL)
    for index, value in enumerate(values, start=1):
        lookup[value] = index
    names = ("background", *(label_name(v) for v in values))
    structures = ("background", *(structure_of(v) or "" for v in values))
    return ClassTable(names, (0, *values), structures, lookup)
