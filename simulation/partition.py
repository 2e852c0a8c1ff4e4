"""Split a manifest into virtual hospitals, always by patient.

Every partitioner assigns whole patients (all their images, with their fixed
train/val/test split) to hospitals, so no patient is in two hospitals. Each
returns one manifest per hospital; ``summary`` tabulates them.

- ``iid``: patients shuffled and dealt out evenly.
- ``dirichlet``: for each value of a manifest column (modality, site, a grade,
  ...), the share of its patients per hospital is drawn from Dirichlet(alpha);
  small alpha gives strong skew.
- ``by_site``: the natural split, one hospital per ``site``.
- ``quantity``: hospital sizes in geometric progression, the largest ``ratio``
  times the smallest.
- ``modality_mix``: hospital i takes the patients whose modalities are within
  its listed set (e.g. one hospital only MR, one only CT).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tasks.errors import UserError
from tasks.manifest import DISC_LEVELS, Manifest


def _patient_values(manifest: Manifest, column: str) -> pd.Series:
    """One value per patient: the most frequent value of ``column`` among their images."""
    if column not in manifest.table:
        raise UserError(f"partition column '{column}' is not in the manifest")
    return manifest.table.groupby("patient_id")[column].agg(lambda v: v.value_counts().index[0])


def _split_by_patients(manifest: Manifest, groups: Sequence[Sequence[str]]) -> list[Manifest]:
    table = manifest.table
    return [Manifest(table[table.patient_id.isin(set(g))].reset_index(drop=True), manifest.root)
            for g in groups]


def _patients(manifest: Manifest) -> list[str]:
    return sorted(manifest.table.patient_id.unique())


def _check_count(manifest: Manifest, hospitals: int) -> None:
    patients = len(_patients(manifest))
    if hospitals < 1 or hospitals > patients:
        raise UserError(f"cannot split {patients} patients into {hospitals} hospitals")


def iid(manifest: Manifest, hospitals: int, seed: int) -> list[Manifest]:
    """Patients shuffled and dealt out round-robin."""
    _check_count(manifest, hospitals)
    patients = np.random.default_rng(seed).permutation(_patients(manifest))
    return _split_by_patients(manifest, [patients[i::hospitals] for i in range(hospitals)])


def dirichlet(manifest: Manifest, hospitals: int, column: str, alpha: float,
              seed: int) -> list[Manifest]:
    """Label/attribute skew: each value's patients spread over hospitals by Dirichlet(alpha)."""
    _check_count(manifest, hospitals)
    if alpha <= 0:
        raise UserError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    values = _patient_values(manifest, column)
    groups: list[list[str]] = [[] for _ in range(hospitals)]
    for value in sorted(values.unique()):
        members = rng.permutation(sorted(values[values == value].index))
        shares = rng.dirichlet(np.full(hospitals, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
        for hospital, part in enumerate(np.split(members, cuts)):
            groups[hospital].extend(part)
    _fill_empty(groups)
    return _split_by_patients(manifest, groups)


def _fill_empty(groups: list[list[str]]) -> None:
    """Give every empty hospital one patient from the largest (a hospital needs data)."""
    for group in groups:
        if not group:
            largest = max(groups, key=len)
            group.append(largest.pop())


def by_site(manifest: Manifest) -> list[Manifest]:
    """The natural split: one hospital per site (sites in sorted order)."""
    sites = sorted(manifest.table.site.unique())
    return [manifest.select(site=s) for s in sites]


def quantity(manifest: Manifest, hospitals: int, ratio: float, seed: int) -> list[Manifest]:
    """Sizes in geometric progression from 1 to ``ratio`` (largest / smallest), by patient."""
    _check_count(manifest, hospitals)
    if ratio < 1:
        raise UserError(f"quantity ratio must be >= 1, got {ratio}")
    patients = np.random.default_rng(seed).permutation(_patients(manifest))
    weights = ratio ** (np.arange(hospitals) / max(hospitals - 1, 1))
    sizes = np.maximum(1, np.floor(weights / weights.sum() * len(patients))).astype(int)
    sizes[-1] += len(patients) - sizes.sum()
    cuts = np.cumsum(sizes)[:-1]
    return _split_by_patients(manifest, np.split(patients, cuts))


def modality_mix(manifest: Manifest, mixes: Sequence[Sequence[str]], seed: int
                 ) -> list[Manifest]:
    """Hospital i gets patients whose images are all of modalities in ``mixes[i]``; patients
    that fit several hospitals are dealt out among them in turn."""
    per_patient = manifest.table.groupby("patient_id")["modality"].agg(frozenset)
    rng = np.random.default_rng(seed)
    groups: list[list[str]] = [[] for _ in mixes]
    for patient in rng.permutation(sorted(per_patient.index)):
        fits = [i for i, mix in enumerate(mixes) if per_patient[patient] <= set(mix)]
        if fits:
            groups[min(fits, key=lambda i: len(groups[i]))].append(patient)
    for i, group in enumerate(groups):
        if not group:
            raise UserError(f"no patient has only modalities {list(mixes[i])} for hospital {i}")
    return _split_by_patients(manifest, groups)


def summary(hospitals: Sequence[Manifest], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per hospital: patients, images, patients per split, images per modality, and the label
    distribution where the manifest has it (mean disc grade, share with scoliosis)."""
    rows = []
    for i, hospital in enumerate(hospitals):
        table = hospital.table
        row: dict[str, object] = {"hospital": names[i] if names else f"hospital-{i}",
                                  "patients": table.patient_id.nunique(), "images": len(table)}
        for split in ("train", "val", "test"):
            row[f"{split}_patients"] = table[table.split == split].patient_id.nunique()
        for modality, count in table.modality.value_counts().sort_index().items():
            row[f"{modality}_images"] = int(count)
        grades = [c for c in (f"pfirrmann_{level}" for level in DISC_LEVELS) if c in table]
        if grades:
            values = pd.to_numeric(table[grades].stack(), errors="coerce")
            row["mean_disc_grade"] = round(float(values.mean()), 2)
        if "cobb_angle" in table:
            cobb = pd.to_numeric(table.groupby("patient_id").cobb_angle.first(), errors="coerce")
            row["scoliosis_share"] = round(float((cobb >= 10).mean()), 2)
        rows.append(row)
    table = pd.DataFrame(rows)
    counts = [c for c in table.columns if c.endswith("_images")]
    table[counts] = table[counts].fillna(0).astype(int)
    return table
