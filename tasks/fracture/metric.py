"""Fracture metrics over vertebrae: AUC, sensitivity and specificity for a fracture (Genant 1
or worse), the Genant grade's quadratic kappa, and per patient whether any vertebra is
fractured.

A vertebra is called fractured where the probability of Genant 1-3 is at least one half;
its grade is then the likeliest of 1-3, else 0 (``called_grade``), so the call and the
grade never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.blocks.agreement import accuracy, quadratic_kappa, roc_auc

GENANT = 4  # grades 0 (none), 1 (mild), 2 (moderate), 3 (severe)


def called_grade(probabilities: np.ndarray) -> np.ndarray:
    """(N,) grades called from (N, 4) Genant probabilities."""
    fractured = probabilities[:, 1:].sum(axis=1) >= 0.5
    return np.where(fractured, 1 + probabilities[:, 1:].argmax(axis=1), 0)


def fracture_metrics(vertebrae: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics of vertebra records {'patient', 'grade' (truth, -1 unknown), 'probabilities'};
    a patient's images (MR T1 and T2) count as one patient, fractured where any is called."""
    metrics = dict.fromkeys(METRICS, float("nan"))
    known = [v for v in vertebrae if v["grade"] >= 0]
    if not known:
        return metrics
    truth = np.array([v["grade"] for v in known])
    probabilities = np.array([v["probabilities"] for v in known])
    grade = called_grade(probabilities)
    fractured, called = truth >= 1, grade >= 1
    metrics["fracture_auc"] = roc_auc(probabilities[:, 1:].sum(axis=1), fractured)
    if fractured.any():
        metrics["fracture_sensitivity"] = float(called[fractured].mean())
    if (~fractured).any():
        metrics["fracture_specificity"] = float((~called[~fractured]).mean())
    metrics["genant_kappa"] = quadratic_kappa(grade, truth, GENANT)
    metrics["genant_accuracy"] = accuracy(grade, truth)
    patients = np.array([v["patient"] for v in known])
    names = np.unique(patients)
    metrics["patient_accuracy"] = accuracy(
        np.array([called[patients == p].any() for p in names]),
        np.array([fractured[patients == p].any() for p in names]))
    metrics["fracture_prevalence"] = float(fractured.mean())
    return metrics


METRICS = ("fracture_auc", "fracture_sensitivity", "fracture_specificity", "genant_kappa",
           "genant_accuracy", "patient_accuracy", "fracture_prevalence")
