"""Virtual hospitals: always split by patient, and skewed the way they claim to be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulation import partition
from tasks.errors import UserError
from tasks.manifest import Manifest


@pytest.fixture(scope="module")
def cohort() -> Manifest:
    """240 patients at 4 sites (CT or MR), each with 1-3 images and one fixed split."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(240):
        site = ["a", "b", "c", "d"][p % 4]
        modality = "MR" if site in ("c", "d") else "CT"
        split = rng.choice(["train", "val", "test"], p=[0.6, 0.2, 0.2])
        for image in range(rng.integers(1, 4)):
            rows.append({"patient_id": f"P{p:04d}", "site": site, "modality": modality,
                         "split": split, "image": f"P{p:04d}/{image}.nii.gz",
                         "pfirrmann_l4_l5": str(rng.integers(1, 6)),
                         "cobb_angle": f"{rng.choice([0.0, 20.0]):.1f}"})
    return Manifest(pd.DataFrame(rows), Path("."))


def methods(cohort: Manifest) -> dict[str, list[Manifest]]:
    return {
        "iid": partition.iid(cohort, 5, seed=1),
        "dirichlet": partition.dirichlet(cohort, 5, "site", alpha=0.3, seed=1),
        "by_site": partition.by_site(cohort),
        "quantity": partition.quantity(cohort, 4, ratio=10.0, seed=1),
        "modality_mix": partition.modality_mix(cohort, [["MR"], ["CT"], ["CT", "MR"]], seed=1),
    }


@pytest.mark.parametrize("method", ["iid", "dirichlet", "by_site", "quantity", "modality_mix"])
def test_partitions_are_disjoint_by_patient_and_cover_everyone(cohort, method):
    hospitals = methods(cohort)[method]
    seen: set[str] = set()
    for hospital in hospitals:
        patients = set(hospital.table.patient_id)
        assert patients, "every hospital has patients"
        assert not patients & seen, "a patient in two hospitals"
        seen |= patients
    assert seen == set(cohort.table.patient_id)
    assert sum(len(h) for h in hospitals) == len(cohort)
    splits = cohort.table.groupby("patient_id").split.first()
    for hospital in hospitals:
        kept = hospital.table.groupby("patient_id").split.first()
        assert (kept == splits[kept.index]).all(), "a patient's split changed"


def skew(hospitals: list[Manifest], column: str) -> float:
    """Mean total-variation distance between each hospital's and the pooled distribution."""
    pooled = pd.concat([h.table for h in hospitals]).groupby("patient_id")[column].first()
    overall = pooled.value_counts(normalize=True)
    distances = []
    for hospital in hospitals:
        local = hospital.table.groupby("patient_id")[column].first().value_counts(normalize=True)
        distances.append(0.5 * local.reindex(overall.index, fill_value=0).sub(overall).abs().sum())
    return float(np.mean(distances))


def test_dirichlet_skew_grows_as_alpha_falls(cohort):
    strong = np.mean([skew(partition.dirichlet(cohort, 5, "site", 0.1, seed=s), "site")
                      for s in range(5)])
    mild = np.mean([skew(partition.dirichlet(cohort, 5, "site", 100.0, seed=s), "site")
                    for s in range(5)])
    iid = np.mean([skew(partition.iid(cohort, 5, seed=s), "site") for s in range(5)])
    assert strong > 0.4
    assert mild < 0.15 and iid < 0.15
    assert strong > 3 * mild


def test_quantity_skew_reaches_the_ratio(cohort):
    sizes = [h.table.patient_id.nunique() for h in partition.quantity(cohort, 4, 10.0, seed=0)]
    assert sizes == sorted(sizes)
    assert 8 <= sizes[-1] / sizes[0] <= 12


def test_natural_and_modality_splits(cohort):
    assert [set(h.table.site) for h in partition.by_site(cohort)] == [{"a"}, {"b"}, {"c"}, {"d"}]
    mr_only, ct_only, both = partition.modality_mix(cohort, [["MR"], ["CT"], ["CT", "MR"]], 0)
    assert set(mr_only.table.modality) == {"MR"} and set(ct_only.table.modality) == {"CT"}
    assert len(both) > 0


def test_summary_describes_each_hospital(cohort):
    table = partition.summary(partition.quantity(cohort, 3, 10.0, seed=0))
    assert list(table.hospital) == ["hospital-0", "hospital-1", "hospital-2"]
    assert table.patients.sum() == 240
    assert {"train_patients", "CT_images", "MR_images", "mean_disc_grade",
            "scoliosis_share"} <= set(table.columns)


def test_impossible_requests_are_refused(cohort):
    with pytest.raises(UserError, match="cannot split 240 patients into 500"):
        partition.iid(cohort, 500, seed=0)
    with pytest.raises(UserError, match="'scanner' is not in the manifest"):
        partition.dirichlet(cohort, 3, "scanner", 0.5, seed=0)
    with pytest.raises(UserError, match=r"only modalities \['XR'\]"):
        partition.modality_mix(cohort, [["XR"]], seed=0)


def test_simulate_offers_every_partitioner(cohort, tmp_path):
    from simulation.config import SIMULATION_KEYS
    from simulation.simulate import split_hospitals
    from tasks.config import validate

    for method in ("site", "iid", "dirichlet", "quantity", "modality"):
        settings = validate({"partition": {"method": method, "hospitals": 3}},
                            {"partition": SIMULATION_KEYS["partition"]}, "test")["partition"]
        hospitals = split_hospitals(cohort, settings, tmp_path / method)
        assert sum(len(m) for _, m in hospitals) == len(cohort)
        assert (tmp_path / method / "hospitals.json").is_file()
