"""Labelling, grading, Cobb and fracture models really learn: held-out phantoms, CPU minutes.

Each trains through `spinefl train`'s code path for a fixed number of epochs with a
cosine schedule (the same model on every machine, however busy) and is judged on the
test split, which no training or model selection has seen.
"""

from __future__ import annotations

import pytest
import torch

from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from tasks.checkpoint import load_checkpoint
from tasks.evaluation import evaluate
from tests.helpers.cohorts import CT_MR_SCANNERS, LEARNING_SCANNERS, XRAY_SCANNER
from tests.helpers.training import train_for

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


def _held_out(manifest, result):
    task, model, _ = load_checkpoint(result.folder / "model.pt")
    test = manifest.select(split="test")
    assert not set(test.table.patient_id) & set(manifest.select(split="train").table.patient_id)
    return evaluate(task, model, test, CPU)


def test_labelling_identifies_nine_in_ten_held_out_ct_vertebrae(learning_cohort, tmp_path):
    """30 epochs of a four-level U-Net identify at least 90% of the held-out CT vertebrae,
    VerSe's way (right label, within 20 mm). Here 25 epochs identify all of them and 15
    none: the count leaves a margin above that cliff."""
    result = train_for(learning_cohort, tmp_path, """name = "labelling"
modalities = ["CT", "MR"]
channels = [8, 16, 32, 64]""", "epochs = 30\nbatch_size = 2\nlr = 0.005\nschedule = \"cosine\"\n"
                       "eval_every = 10")
    evaluation = _held_out(learning_cohort, result)
    ct = evaluation.per_image[evaluation.per_image.modality == "CT"]
    assert len(ct) >= 2 and ct.vertebrae.sum() >= 12
    assert ct.identified.sum() / ct.vertebrae.sum() >= 0.9, ct.to_string()
    assert ct.distance_sum.sum() / ct.matched.sum() < 12.0, ct.to_string()


def test_grading_beats_the_majority_class_on_held_out_discs(tmp_path):
    """80 epochs: quadratic kappa at least 0.5 on the held-out discs (0.70 here; always
    predicting the majority grade scores 0) and accuracy above the majority grade's rate.
    Kappa is the measure judged: the test split's ~40 discs make accuracy move by 0.1
    between runs that differ only in CPU threads."""
    config = cohort_config({"cohort": {"patients": 30, "seed": 21, "degeneration": 1.0,
                                       "herniation_probability": 0.5},
                            "scanner": LEARNING_SCANNERS}, "grading cohort")
    manifest = generate(config, tmp_path / "phantoms")
    result = train_for(manifest, tmp_path, 'name = "grading"',
                       "epochs = 80\nbatch_size = 16\nlr = 0.01\nschedule = \"cosine\"\n"
                       "eval_every = 10")
    metrics = _held_out(manifest, result).metrics
    assert metrics["pfirrmann_accuracy"] > metrics["pfirrmann_majority"], metrics
    assert metrics["pfirrmann_kappa"] >= 0.5, metrics


def test_cobb_angle_error_is_under_five_degrees_on_held_out_radiographs(tmp_path):
    """60 epochs: mean absolute Cobb error under 5 degrees on held-out AP radiographs
    (1.7 here)."""
    config = cohort_config({"cohort": {"patients": 30, "seed": 0, "scoliosis_probability": 0.5},
                            "scanner": [XRAY_SCANNER, {**XRAY_SCANNER, "name": "xr-b",
                                                       "spacing": [1.4, 1.4, 1.4],
                                                       "noise": 0.05, "scale": 1.3}]},
                           "cobb cohort")
    manifest = generate(config, tmp_path / "phantoms")
    result = train_for(manifest, tmp_path, 'name = "cobb"',
                       "epochs = 60\nbatch_size = 4\nlr = 0.003\nschedule = \"cosine\"\n"
                       "eval_every = 10")
    evaluation = _held_out(manifest, result)
    assert len(evaluation.per_image) >= 5
    assert (evaluation.per_image.cobb_true > 0).any()
    assert evaluation.metrics["cobb_mae"] < 5.0, evaluation.per_image.to_string()


def test_fracture_grading_ranks_held_out_fractured_vertebrae_above_intact_ones(tmp_path):
    """40 epochs on 18 CT patients with about one vertebra in three fractured: per-vertebra
    AUC of a fracture at least 0.8 on the held-out patients (0.93 on two threads, 0.91 on
    one; chance is 0.5). The ranking is what is judged: the call at probability one half is
    not yet calibrated after 40 epochs (on one thread the same run called every vertebra
    fractured, Genant kappa 0; on two, kappa 0.75)."""
    config = cohort_config({"cohort": {"patients": 30, "seed": 31, "fracture_probability": 0.3},
                            "scanner": [CT_MR_SCANNERS[0], CT_MR_SCANNERS[2]]},
                           "fracture cohort")
    manifest = generate(config, tmp_path / "phantoms")
    result = train_for(manifest, tmp_path, 'name = "fracture"',
                       "epochs = 40\nbatch_size = 16\nlr = 0.01\nschedule = \"cosine\"\n"
                       "eval_every = 10")
    evaluation = _held_out(manifest, result)
    fractured = evaluation.per_image.fractured.sum()
    assert fractured >= 5 and evaluation.per_image.vertebrae.sum() - fractured >= 10
    assert evaluation.metrics["fracture_auc"] >= 0.8, evaluation.metrics
