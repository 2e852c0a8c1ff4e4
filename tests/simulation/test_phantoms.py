"""The phantom generator: determinism, anatomy, Cobb angle, physical intensities."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from simulation.phantoms.anatomy import (
    SACRUM,
    Anatomy,
    CohortSettings,
    Tissue,
    sample_anatomy,
)
from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import OutputExistsError, generate
from simulation.phantoms.imaging import ScannerEffects, acquire, ct_hu, mr_signal
from simulation.phantoms.raster import grid_around, rasterize
from tasks.config import ConfigError
from tasks.labels import disc_label

SCANNERS = [
    {"name": "ct-ras", "modality": "CT", "spacing": [1.5, 1.5, 2.0], "fov": 120.0},
    {"name": "mr-lps", "modality": "MR", "spacing": [1.5, 1.5, 3.0], "fov": 120.0,
     "scale": 800.0, "noise": 0.03, "bias": 0.2, "orientation": "LPS"},
    {"name": "ct-pir", "modality": "CT", "spacing": [1.5, 1.5, 2.5], "fov": 120.0,
     "orientation": "PIR"},
    {"name": "xr", "modality": "XR", "spacing": [1.5, 1.5, 1.5], "fov": 120.0, "noise": 0.02},
]


def small_cohort(patients: int = 4, **cohort):
    return cohort_config({"cohort": {"patients": patients, "seed": 11, **cohort},
                          "scanner": SCANNERS}, "test cohort")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate(small_cohort(scoliosis_probability=0.5, herniation_probability=0.5),
                    tmp_path_factory.mktemp("phantoms"))


def test_generation_is_deterministic(cohort, tmp_path):
    again = generate(small_cohort(scoliosis_probability=0.5, herniation_probability=0.5),
                     tmp_path)
    assert again.table.equals(cohort.table)
    for row in cohort.rows():
        for column in ("image", "mask"):
            first = np.asarray(nib.load(cohort.path(row, column)).dataobj)
            second = np.asarray(nib.load(again.path(row, column)).dataobj)
            np.testing.assert_array_equal(first, second)


def test_a_patient_does_not_depend_on_cohort_size(tmp_path):
    one = generate(small_cohort(patients=1), tmp_path / "one")
    three = generate(small_cohort(patients=3), tmp_path / "three")
    row = one.rows()[0]
    same = three.select(patient_id=row["patient_id"]).rows()[0]
    np.testing.assert_array_equal(nib.load(one.path(row, "mask")).get_fdata(),
                                  nib.load(three.path(same, "mask")).get_fdata())


def test_extra_test_patients_leave_the_cohort_as_it_was(tmp_path):
    scanners = [{**SCANNERS[0], "share": 2.0}, {**SCANNERS[2], "extra_test_patients": 2}]
    plain = generate(cohort_config({"cohort": {"patients": 6, "seed": 11},
                                    "scanner": [{**s, "extra_test_patients": 0}
                                                for s in scanners]}, "plain"), tmp_path / "a")
    more = generate(cohort_config({"cohort": {"patients": 6, "seed": 11}, "scanner": scanners},
                                  "more"), tmp_path / "b")
    columns = ["patient_id", "site", "split"]
    kept = more.table[more.table.patient_id.isin(plain.table.patient_id)]
    assert kept[columns].reset_index(drop=True).equals(plain.table[columns])
    for row in plain.rows():
        same = more.select(patient_id=row["patient_id"]).rows()[0]
        np.testing.assert_array_equal(np.asarray(nib.load(plain.path(row, "image")).dataobj),
                                      np.asarray(nib.load(more.path(same, "image")).dataobj))
    # a cohort without test-only patients records itself as before the key existed, so a
    # folder generated then is still recognised as this cohort
    assert "extra_test_patients" not in json.dumps(cohort_config(
        {"cohort": {"patients": 6}, "scanner": [SCANNERS[0]]}, "old").raw)
    added = more.table[~more.table.patient_id.isin(plain.table.patient_id)]
    assert list(added.patient_id) == ["P0007", "P0008"]
    assert set(added.site) == {"ct-pir"} and set(added.split) == {"test"}
    first, second = (np.asarray(nib.load(more.path(row, "mask")).dataobj)
                     for row in added.to_dict("records"))
    assert first.shape != second.shape or not np.array_equal(first, second)  # two patients


def test_every_centroid_lies_inside_its_own_vertebra(cohort):
    checked = 0
    for row in cohort.rows():
        if not row["centroids"]:
            continue
        mask = np.asarray(nib.load(cohort.path(row, "mask")).dataobj)
        entries = json.loads(cohort.path(row, "centroids").read_text())
        assert "direction" in entries[0]
        affine = nib.load(cohort.path(row, "mask")).affine
        assert tuple(entries[0]["direction"]) == nib.aff2axcodes(affine)
        for entry in entries[1:]:
            voxel = tuple(round(entry[k]) for k in ("X", "Y", "Z"))
            assert mask[voxel] == entry["label"], (row["image"], entry)
            checked += 1
    assert checked >= 18


def test_discs_lie_between_their_two_vertebrae(cohort):
    for row in cohort.rows():
        if row["modality"] == "XR":
            continue
        image = nib.load(cohort.path(row, "mask"))
        mask = np.asarray(image.dataobj)
        present = [int(v) for v in np.unique(mask) if 19 <= v <= 26]
        for upper, lower in itertools.pairwise(present):
            disc = mask == disc_label(upper)
            assert disc.any(), f"{row['image']}: no disc below {upper}"
            centre = {v: np.argwhere(mask == v).mean(0) for v in (upper, lower)}
            d = np.argwhere(disc).mean(0)
            axis = centre[upper] - centre[lower]
            t = np.dot(d - centre[lower], axis) / np.dot(axis, axis)
            assert 0.2 < t < 0.8, (row["image"], upper, t)
            touching = set(np.unique(mask[ndimage.binary_dilation(disc) & ~disc]).tolist())
            vertebrae = {v for v in touching if 0 < v < 100}
            assert {upper, lower} <= vertebrae <= {upper, lower}, (upper, touching)


def _endplate_tilt(top: bool, body: np.ndarray) -> float:
    """Coronal tilt (degrees) of a body's top or bottom surface, from a plane fit."""
    points = np.argwhere(body)
    centre, spread = points.mean(0), points.std(0)
    columns = {}
    for x, y, z in points:
        if abs(x - centre[0]) < 1.0 * spread[0] and abs(y - centre[1]) < 1.0 * spread[1]:
            key = (x, y)
            columns[key] = max(columns.get(key, z), z) if top else min(columns.get(key, z), z)
    xy = np.array(list(columns))
    z = np.array(list(columns.values()), dtype=float)
    design = np.column_stack([xy, np.ones(len(xy))])
    (alpha, _beta, _c), *_ = np.linalg.lstsq(design, z, rcond=None)
    return float(np.degrees(np.arctan(-alpha)))


@pytest.mark.parametrize("cobb", [0.0, 12.0, 35.0])
def test_cobb_angle_measured_from_the_mask_matches_the_request(cobb):
    settings = CohortSettings(scoliosis_probability=1.0, cobb_range=(cobb, cobb),
                              fracture_probability=0.0)
    anatomy = sample_anatomy(np.random.default_rng(5), settings)
    assert anatomy.cobb == pytest.approx(cobb)
    assert np.ptp(anatomy.endplate_tilts()) == pytest.approx(cobb, abs=1e-6)
    labels, tissue = rasterize(anatomy, grid_around(anatomy, (1.0, 1.0, 1.0), 140.0))
    body_tissue = (tissue == Tissue.CORTICAL) | (tissue == Tissue.TRABECULAR)
    tilts = []
    for vertebra in anatomy.vertebrae:
        if vertebra.label == SACRUM:
            continue
        body = (labels == vertebra.label) & body_tissue
        tilts.append(np.mean([_endplate_tilt(True, body), _endplate_tilt(False, body)]))
    assert max(tilts) - min(tilts) == pytest.approx(cobb, abs=1.0)


def _phantom(seed: int, **settings):
    anatomy = sample_anatomy(np.random.default_rng(seed), CohortSettings(**settings))
    labels, tissue = rasterize(anatomy, grid_around(anatomy, (1.0, 1.0, 2.0), 130.0))
    return anatomy, labels, tissue


@pytest.mark.parametrize("osteoporosis", [False, True])
def test_ct_values_fall_in_physical_hu_ranges(osteoporosis):
    anatomy, _labels, tissue = _phantom(3, osteoporosis_probability=float(osteoporosis))
    assert anatomy.osteoporosis is osteoporosis
    rng = np.random.default_rng(0)
    ct = acquire(ct_hu(tissue, anatomy, rng), ScannerEffects(noise=20.0, blur=0.5), rng)
    ranges = {Tissue.AIR: (-1010, -950), Tissue.FAT: (-130, -70), Tissue.MUSCLE: (20, 70),
              Tissue.CSF: (-5, 30), Tissue.ANNULUS: (60, 130), Tissue.NUCLEUS: (50, 120),
              Tissue.TRABECULAR: (50, 150) if osteoporosis else (150, 320)}
    for code, (low, high) in ranges.items():
        where = ndimage.binary_erosion(tissue == code)  # away from partial-volume edges
        assert where.sum() > 50, code
        assert low <= np.median(ct[where]) <= high, (code, np.median(ct[where]))
    cortex = np.median(ct[tissue == Tissue.CORTICAL])
    assert cortex > 350 and (cortex < 800 if osteoporosis else cortex > 500)


def test_t2_nucleus_darkens_with_degeneration_grade():
    grades, signals = [], []
    for seed in range(6):
        anatomy, labels, tissue = _phantom(seed, degeneration=1.0)
        t2 = mr_signal(tissue, labels, anatomy, "T2", np.random.default_rng(0))
        for disc in anatomy.discs:
            nucleus = (labels == disc.label) & (tissue == Tissue.NUCLEUS)
            if nucleus.any():
                grades.append(disc.grade)
                signals.append(float(t2[nucleus].mean()))
    assert len(set(grades)) >= 3
    by_grade = {g: np.mean([s for gg, s in zip(grades, signals, strict=True) if gg == g])
                for g in set(grades)}
    ordered = [by_grade[g] for g in sorted(by_grade)]
    assert all(a > b for a, b in itertools.pairwise(ordered)), by_grade


def test_degenerated_discs_are_lower_and_herniations_narrow_the_canal():
    anatomy, labels, _tissue = _phantom(2, degeneration=1.5, herniation_probability=1.0)
    herniated = [d for d in anatomy.discs if d.herniation > 0]
    assert herniated, "expected at least one herniation"
    healthy = [d for d in anatomy.discs if d.grade <= 2]
    worst = max(anatomy.discs, key=lambda d: d.grade)
    if healthy:
        assert worst.height < min(d.height for d in healthy)
    intact = Anatomy(**{**anatomy.__dict__,
                        "discs": tuple(replace(d, herniation=0.0) for d in anatomy.discs)})
    intact_labels, _ = rasterize(intact, grid_around(anatomy, (1.0, 1.0, 2.0), 130.0))
    assert (labels == 200).sum() < (intact_labels == 200).sum()
    discs = (labels > 100) & (labels < 200)
    assert discs.sum() > ((intact_labels > 100) & (intact_labels < 200)).sum()


def test_radiograph_labels_follow_the_spine_from_top_to_bottom(cohort):
    for row in cohort.select(modality="XR").rows():
        image = np.asarray(nib.load(cohort.path(row)).dataobj)
        labels = np.asarray(nib.load(cohort.path(row, "mask")).dataobj)
        assert image.ndim == 2 and labels.shape == image.shape
        vertebrae = [int(v) for v in np.unique(labels) if 0 < v < 100]
        heights = [np.argwhere(labels == v)[:, 1].mean() for v in vertebrae]
        assert heights == sorted(heights, reverse=True), (vertebrae, heights)
        assert image[labels > 0].mean() > image[labels == 0].mean()


def test_manifest_carries_the_ground_truth(cohort):
    table = cohort.table
    assert set(table.modality) == {"CT", "MR", "XR"}
    assert set(table[table.modality == "MR"].sequence) == {"T1", "T2"}
    assert (table.groupby("patient_id").split.nunique() == 1).all()
    assert table.pfirrmann_l4_l5.astype(int).between(1, 5).all()
    assert table.cobb_angle.astype(float).between(0, 120).all()


def test_output_folder_with_another_cohort_is_refused(cohort, tmp_path):
    generate(small_cohort(patients=1), tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputExistsError, match="--force"):
        generate(small_cohort(patients=2), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    generate(small_cohort(patients=2), tmp_path, force=True)


@pytest.mark.parametrize(("scanner", "message"), [
    ({"name": "a", "modality": "PET"}, "scanner.modality must be one of"),
    ({"name": "a", "modality": "CT", "spacingg": [1, 1, 1]}, "did you mean 'scanner.spacing'"),
    ({"name": "a", "modality": "CT", "orientation": "RAR"}, "not an orientation code"),
    ({"modality": "CT"}, "missing required key scanner.name"),
    ({"name": "a", "modality": "CT", "share": 0.0, "extra_test_patients": 2}, "nothing to train"),
])
def test_bad_cohort_configs_are_refused_naming_the_key(scanner, message):
    with pytest.raises(ConfigError, match=message):
        cohort_config({"scanner": [scanner]}, "cohort.toml")


def test_an_unknown_section_lists_every_known_one():
    with pytest.raises(ConfigError, match=r"unknown section 'scanners' \(did you mean 'scanner'"):
        cohort_config({"scanners": [{"name": "a", "modality": "CT"}]}, "cohort.toml")
    with pytest.raises(ConfigError, match=r"unknown section 'people' \(known: cohort, scanner\)"):
        cohort_config({"people": {}}, "cohort.toml")
