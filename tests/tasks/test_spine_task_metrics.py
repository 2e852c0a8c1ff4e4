"""Labelling, grading and Cobb metrics against hand-computed cases and their official
definitions; the geometry that turns landmarks and label maps into positions and angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulation.phantoms.anatomy import CohortSettings, sample_anatomy
from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from tasks.blocks.agreement import accuracy, quadratic_kappa, roc_auc
from tasks.blocks.classes import NAMED_VERTEBRAE
from tasks.cobb.geometry import angle_between, bodies, body_of, cobb_angle
from tasks.cobb.landmarks import body_quads, quad_label_map, shrink
from tasks.cobb.metric import circular_mae, smape
from tasks.fracture.dataset import row_vertebrae, vertebra_centres
from tasks.fracture.loss import fracture_loss
from tasks.fracture.metric import called_grade, fracture_metrics
from tasks.grading.discs import centres_between, centres_from_centroids
from tasks.grading.loss import grading_loss
from tasks.grading.metric import any_severe_log_loss, weighted_log_loss
from tasks.imageio import load_image
from tasks.labelling.centroids import centroid_list, read_centroids
from tasks.labelling.metric import identification, pool, rates
from tasks.labelling.sequence import (
    arc_lengths,
    decode,
    level_step,
    name,
    typical_step,
    vertebrae,
)
from tasks.points import label_centroids, read_points
from tests.helpers.task_defaults import default_task


def _point(z: float) -> np.ndarray:
    return np.array([0.0, 0.0, z])


def test_identification_follows_verse():
    truth = {20: _point(0), 21: _point(30), 22: _point(60), 23: _point(90)}
    predicted = {20: _point(5),      # nearest to L1, right label, 5 mm: identified
                 21: _point(58),     # labelled L2 but nearest to L3: L2 and L3 missed
                 23: _point(114)}    # right label but 24 mm away: missed
    counts = identification(predicted, truth, radius=20.0)
    assert counts == {"vertebrae": 4.0, "identified": 1.0, "predicted": 3.0, "matched": 3.0,
                      "distance_sum": 5.0 + 28.0 + 24.0}
    assert rates(counts) == {"id_rate": 0.25, "localisation_mm": pytest.approx(57 / 3)}
    assert identification({}, truth)["identified"] == 0.0
    # Pooled over vertebrae, not averaged over images.
    perfect = identification(truth, truth)
    assert pool([counts, perfect]) == {"id_rate": 5 / 8, "localisation_mm": pytest.approx(57 / 7)}


def test_label_centroids_take_each_labels_largest_part_into_world_mm():
    labels = np.zeros((20, 20, 20), dtype=np.int16)
    labels[2:6, 2:6, 2:6] = 20          # L1: a cube centred at (3.5, 3.5, 3.5)
    labels[15, 15, 15] = 20             # a stray voxel of L1: ignored
    labels[10:12, 10:14, 10:12] = 21    # L2: centred at (10.5, 11.5, 10.5)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    found = label_centroids(labels, affine, (20, 21, 22))
    np.testing.assert_allclose(found[20], [-3.0, 7.0, 15.5])
    np.testing.assert_allclose(found[21], [11.0, 23.0, 36.5])
    assert 22 not in found
    assert 21 not in label_centroids(labels, affine, (21,), min_voxels=17)
    listed = centroid_list(found, affine)
    assert listed[0] == {"direction": ["R", "A", "S"]}
    assert listed[1] == {"label": 20, "X": 3.5, "Y": 3.5, "Z": 3.5}
    again = read_centroids(listed[1:], affine)
    np.testing.assert_allclose(again[21], found[21])


def test_phantom_centroid_files_mark_their_vertebrae(tiny_cohort):
    row = tiny_cohort.select(modality="CT", site="ct-c").rows()[0]  # stored LPS
    mask = load_image(tiny_cohort.path(row, "mask"))
    truth = read_centroids(read_points(tiny_cohort.path(row, "centroids")), mask.affine)
    from_mask = label_centroids(mask.array, mask.affine, tuple(truth))
    assert set(truth) == set(from_mask)
    for label, point in truth.items():  # body centre vs whole-vertebra centre of mass
        assert np.linalg.norm(point - from_mask[label]) < 20.0


def test_quadratic_kappa_accuracy_and_rsna_log_loss_by_hand():
    truth, predicted = np.array([0, 1, 2]), np.array([0, 2, 2])
    assert accuracy(predicted, truth) == pytest.approx(2 / 3)
    # Observed weighted disagreement 1/4; expected 2/3 + 1/4 + 1/3 (worked out by hand).
    assert quadratic_kappa(predicted, truth, 3) == pytest.approx(1 - 0.25 / 1.25)
    assert quadratic_kappa(truth, truth, 3) == 1.0
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    expected = -(1 * math.log(0.7) + 2 * math.log(0.5) + 4 * math.log(0.8)) / 7
    assert weighted_log_loss(probabilities, truth, (1, 2, 4)) == pytest.approx(expected)
    # Rows are normalised to sum to 1, then clipped, as the RSNA metric does.
    assert weighted_log_loss(np.array([[2.0, 1.0, 1.0]]), np.array([0]), (1, 2, 4)) == (
        pytest.approx(math.log(2)))
    assert weighted_log_loss(np.array([[0.0, 1.0, 0.0]]), np.array([0]), (1, 2, 4)) == (
        pytest.approx(-math.log(1e-15), rel=1e-6))
    severe = np.array([0.1, 0.6, 0.2])
    studies = np.array(["a", "a", "b"])
    severity = np.array([0, 2, 0])
    assert any_severe_log_loss(severe, studies, severity) == pytest.approx(
        (4 * -math.log(0.6) + 1 * -math.log(0.8)) / 5)


def test_roc_auc_counts_ordered_pairs_ties_as_half():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert math.isnan(roc_auc(np.array([0.2, 0.9]), np.array([1, 1])))


def test_fracture_metrics_by_hand():
    def vertebra(patient, grade, p_none, p_mild=0.0, p_moderate=0.0):
        return {"patient": patient, "grade": grade,
                "probabilities": np.array([p_none, p_mild, p_moderate,
                                           1 - p_none - p_mild - p_moderate])}

    vertebrae = [vertebra("a", 0, 0.9, 0.1), vertebra("a", 2, 0.3, 0.1, 0.5),  # found, grade 2
                 vertebra("b", 1, 0.6, 0.3),    # missed: fracture probability 0.4
                 vertebra("b", 0, 0.4, 0.2, 0.2),  # false alarm; 1-3 tie: grade 1
                 vertebra("c", 0, 0.8, 0.2), vertebra("c", -1, 0.1)]  # ungraded: left out
    metrics = fracture_metrics(vertebrae)
    # fracture probabilities: negatives 0.1, 0.6, 0.2; positives 0.7, 0.4 -> 5 of 6 pairs
    assert metrics["fracture_auc"] == pytest.approx(5 / 6)
    assert metrics["fracture_sensitivity"] == 0.5
    assert metrics["fracture_specificity"] == pytest.approx(2 / 3)
    assert metrics["genant_accuracy"] == pytest.approx(3 / 5)  # called 0, 2, 0, 1, 0
    # per patient only whether any vertebra is fractured: b is right, by the wrong vertebra
    assert metrics["patient_accuracy"] == 1.0
    assert metrics["fracture_prevalence"] == pytest.approx(2 / 5)
    np.testing.assert_array_equal(
        called_grade(np.array([[0.4, 0.3, 0.2, 0.1], [0.6, 0.1, 0.1, 0.2]])), [1, 0])


def test_fracture_loss_weights_fractures_and_skips_unknown_grades():
    import torch

    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    grade = torch.tensor([0, 1, -1])
    ce = torch.nn.functional.cross_entropy(logits, grade.clamp(min=0), reduction="none")
    assert fracture_loss(logits, grade, 4.0) == pytest.approx(float(ce[0] + 4 * ce[1]) / 3)


def test_phantom_vertebra_crops_carry_their_genant_grades(tmp_path):
    config = cohort_config({"cohort": {"patients": 2, "seed": 4, "fracture_probability": 0.5},
                            "scanner": [{"name": "ct", "modality": "CT",
                                         "spacing": [1.5, 1.5, 2.0], "fov": 120.0}]}, "t")
    manifest = generate(config, tmp_path)
    task = default_task("fracture")
    grades = []
    for row in task.select(manifest).rows():
        crops = row_vertebrae(manifest, row, task.settings)
        assert crops and all(c.image.shape == (3, 32, 48) for c in crops)
        for crop in crops:
            assert crop.labels == (int(row[f"fracture_{crop.name}"]),)
            grades.append(crop.labels[0])
        # without a centroid file the mask finds the same vertebrae (its labels' centres
        # lie behind the bodies' by the posterior arch: within the crop's 64 mm)
        image = load_image(manifest.path(row))
        from_mask = vertebra_centres(manifest, {**row, "centroids": ""}, image)
        assert set(from_mask) == {c.name for c in crops}
        assert all(np.linalg.norm(from_mask[c.name] - c.centre) < 16.0 for c in crops)
    assert 0 in grades and max(grades) >= 1, grades


def test_grading_loss_ignores_missing_labels_and_weights_severity():
    import torch

    logits = torch.zeros(2, 8)
    plain = math.log(5) + math.log(3)
    both = grading_loss(logits, torch.tensor([0, 3]), torch.tensor([0, 2]))
    assert float(both) == pytest.approx((plain + math.log(5) + 4 * math.log(3)) / 2)
    missing = grading_loss(logits, torch.tensor([-1, 3]), torch.tensor([0, -1]))
    assert float(missing) == pytest.approx((math.log(3) + math.log(5)) / 2)


def test_disc_centres_lie_between_their_vertebrae():
    vertebrae = {23: _point(0), 24: _point(-30), 26: _point(-70), 20: _point(90)}
    centres = centres_between(vertebrae)
    assert set(centres) == {"l4_l5", "l5_s1"}
    np.testing.assert_allclose(centres["l5_s1"], _point(-50))
    points = [{"direction": ["R", "A", "S"]}, {"label": 22, "X": 1, "Y": 2, "Z": 10},
              {"label": 23, "X": 1, "Y": 2, "Z": 20}]
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(centres_from_centroids(points, affine)["l3_l4"], [1, 2, 30])


def test_cobb_metrics_by_hand_and_aasce_smape():
    assert angle_between(179.0, 1.0) == pytest.approx(2.0)
    assert circular_mae(np.array([10.0, 179.0]), np.array([14.0, 1.0])) == pytest.approx(3.0)
    # AASCE: per image, sum of absolute errors over sum of predicted + true angles.
    predicted = np.array([[10.0, 20.0, 30.0], [0.0, 5.0, 0.0]])
    truth = np.array([[12.0, 18.0, 30.0], [0.0, 5.0, 0.0]])
    assert smape(predicted, truth) == pytest.approx(100 * (4 / 120 + 0 / 10) / 2)
    assert smape(np.zeros((1, 3)), np.zeros((1, 3))) == 0.0
    assert cobb_angle([-5.0, 12.0, 3.0]) == pytest.approx(17.0)
    assert cobb_angle([4.0]) == 0.0


def test_a_tilted_rectangle_gives_its_tilt_and_corners():
    width, height, tilt = 40.0, 20.0, 17.0
    u, v = np.radians(tilt), np.radians(tilt + 90)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 81), np.linspace(-1, 1, 41)), -1).reshape(-1, 2)
    points = (grid[:, :1] * width / 2 * np.array([np.cos(u), np.sin(u)])
              + grid[:, 1:] * height / 2 * np.array([np.cos(v), np.sin(v)]))
    body = body_of(points + np.array([50.0, 80.0]))
    assert body.tilt == pytest.approx(tilt, abs=0.01)
    np.testing.assert_allclose(body.centre, [50, 80], atol=1e-6)
    sides = np.linalg.norm(np.diff(body.corners, axis=0, append=body.corners[:1]), axis=1)
    np.testing.assert_allclose(sorted(sides), [height, height, width, width], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_phantom_body_corners_and_their_label_maps_give_the_true_cobb_angle(seed):
    from simulation.phantoms.generator import body_corners

    anatomy = sample_anatomy(np.random.default_rng(seed), CohortSettings(
        scoliosis_probability=1.0))
    affine = np.array([[1.2, 0, 0, -80], [0, 0, 1, 0], [0, 1.2, 0, -300], [0, 0, 0, 1]])
    quads = body_quads(body_corners(anatomy, affine))
    assert len(quads) == len(anatomy.vertebrae) - 1  # every body but the sacrum
    assert cobb_angle([body_of(q * 1.2).tilt for q in quads]) == pytest.approx(anatomy.cobb,
                                                                               abs=0.01)
    labels = quad_label_map(quads, (140, 280))
    found = bodies(labels == 1, (1.2, 1.2), 0.4)
    assert len(found) == len(quads)
    assert cobb_angle([b.tilt for b in found]) == pytest.approx(anatomy.cobb, abs=1.0)
    assert body_of(shrink(quads[0]) * 1.2).tilt == pytest.approx(body_of(quads[0] * 1.2).tilt,
                                                                 abs=0.01)


LUMBAR = (19, 20, 21, 22, 23, 24, 26)  # T12, L1-L5, sacrum


def _spine(called: tuple[int, ...] = LUMBAR, tilt: float = 0.0
           ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Level probabilities (one-hot, NAMED_VERTEBRAE order) of a straight spine on a 4 mm
    grid, tilted by ``tilt`` degrees towards +y: 28 mm vertebrae (the sacrum 48 mm) with
    8 mm discs, each vertebra called ``called[i]`` (0: missed). Returns the levels, the
    grid's affine and each true vertebra's world centre."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    x, y, z = np.meshgrid(*(np.arange(n) * 4.0 for n in (20, 60, 80)), indexing="ij")
    angle = np.radians(tilt)
    axis = np.array([0.0, np.sin(angle), -np.cos(angle)])  # head to feet
    top = np.array([40.0, 120.0 - 140.0 * np.sin(angle), 300.0])
    rel = np.stack([x, y, z], axis=-1) - top
    along = rel @ axis
    across = np.linalg.norm(rel - along[..., None] * axis, axis=-1)
    levels = np.zeros((len(NAMED_VERTEBRAE), *x.shape))
    centres = {}
    start = 0.0
    for true, call in zip(LUMBAR, called, strict=True):
        height = 48.0 if true == 26 else 28.0
        inside = (along >= start) & (along < start + height) & (across < 22.0)
        if call:
            levels[NAMED_VERTEBRAE.index(call)][inside] = 1.0
        centres[true] = top + (start + height / 2) * axis
        start += height + 8.0
    return levels, affine, centres


@pytest.mark.parametrize("tilt", [0.0, 30.0])
def test_decoding_names_a_clean_prediction_at_its_centres(tilt):
    levels, affine, centres = _spine(tilt=tilt)
    found = decode(levels, NAMED_VERTEBRAE, affine, min_voxels=16)
    assert sorted(found) == sorted(centres)
    for label, centre in centres.items():
        assert np.linalg.norm(found[label] - centre) < 3.0, (label, found[label], centre)


@pytest.mark.parametrize("tilt", [0.0, 30.0])
def test_decoding_counts_from_the_sacrum_when_the_network_misnames_the_top(tilt):
    # T12 called L1, L1 and L2 both called L2 (one region over two vertebrae), L4 missed.
    levels, affine, centres = _spine((20, 21, 21, 22, 0, 24, 26), tilt)
    found = decode(levels, NAMED_VERTEBRAE, affine, min_voxels=16)
    assert sorted(found) == [19, 20, 21, 22, 24, 26]
    for label in found:
        assert np.linalg.norm(found[label] - centres[label]) < 6.0, label
    assert decode(np.zeros_like(levels), NAMED_VERTEBRAE, affine) == {}


# A federated model's foreground profile along one CT test phantom's spine (4 mm bins, head
# first) and each bin's most likely level (NAMED_VERTEBRAE indices: 12-16 L1-L5, 17 the
# sacrum): the levels change where they should, but the foreground does not dip enough at
# the discs for the profile to repeat, so typical_step finds no step.
REAL_PROFILE = [
    10.5, 19.7, 29.1, 48.6, 57.4, 53.6, 40.3, 44.1, 56.6, 74.7, 96.6, 69.0, 51.3, 59.5, 83.2,
    108.2, 70.3, 78.0, 65.6, 58.2, 45.5, 67.3, 76.0, 81.2, 63.9, 50.5, 48.9, 74.7, 64.2, 19.5,
    32.8, 125.8, 109.4, 91.0, 103.1, 107.9, 103.6, 73.6, 65.0, 42.5, 123.7, 129.2, 113.0,
    100.3, 60.9, 71.6, 77.2, 80.9, 155.4, 110.1, 104.8, 146.2, 203.8, 174.1, 144.5, 120.1,
    95.7, 77.9, 62.8, 42.6, 36.2, 26.9, 21.0, 9.9, 0.7]
REAL_LEVELS = [12] * 11 + [13] * 7 + [14] * 9 + [15] * 9 + [16] * 9 + [17] * 20


def test_a_profile_that_does_not_repeat_takes_its_step_from_the_levels():
    foreground = np.array(REAL_PROFILE)
    mass = np.zeros((len(foreground), 18))
    mass[np.arange(len(foreground)), REAL_LEVELS] = foreground
    assert typical_step(foreground, 4.0) is None
    step = level_step(mass, True, 4.0)
    assert step == pytest.approx(8.2, abs=0.5)  # L1's run is cut by the top, the others 7-9
    assert vertebrae(foreground, mass, None, sacrum=True) == [(0, len(foreground))]
    pieces = vertebrae(foreground, mass, step, sacrum=True)
    # one piece per level run (and a sliver above L1), named consecutively down to the sacrum
    assert pieces[2:] == [(11, 18), (18, 27), (27, 36), (36, 45), (45, 65)]
    assert name(pieces, mass) == [11, 12, 13, 14, 15, 16, 17]


def test_spine_step_and_arc_length():
    period = np.tile([1.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 3.0, 1.0], 8)
    assert typical_step(period, 4.0) == pytest.approx(9.0, abs=0.3)
    assert typical_step(period[:20], 4.0) is None
    mass = np.zeros((len(period), 4))
    for level in range(4):  # levels 9 bins apart, the last (a sacrum) 18 bins long
        mass[9 * level: 9 * level + (18 if level == 3 else 9), level] = 1.0
    assert level_step(mass, True, 4.0) == pytest.approx(9.0)
    assert level_step(mass[:, [0, 3]], True, 4.0) is None  # one vertebra: no neighbours
    # A straight line of voxels 45 degrees off the axis: arc length is distance along it.
    index = np.array([[5.0, k, 20.0 - k] for k in range(15)])
    arc = arc_lengths(index, np.ones(len(index)), np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(arc - arc[0], np.arange(15) * 2.0 * np.sqrt(2.0), atol=1e-6)

