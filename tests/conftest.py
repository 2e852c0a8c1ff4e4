"""Shared fixtures: small phantom cohorts made on the spot (no download, no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from tasks.imageio import Volume
from tests.helpers.cohorts import CT_MR_SCANNERS, LEARNING_SCANNERS, XRAY_SCANNER
from tests.helpers.training import train_for


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Nine patients on two CT scanners and one MR scanner (a train, val and test patient each)."""
    config = cohort_config({"cohort": {"patients": 9, "seed": 3}, "scanner": CT_MR_SCANNERS},
                           "tiny cohort")
    return generate(config, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_xray(tmp_path_factory):
    """Six patients' AP radiographs at one site, half of them scoliotic."""
    config = cohort_config({"cohort": {"patients": 6, "seed": 5, "scoliosis_probability": 0.5},
                            "scanner": [XRAY_SCANNER]}, "tiny radiographs")
    return generate(config, tmp_path_factory.mktemp("tiny-xray"))


@pytest.fixture(scope="session")
def learning_cohort(tmp_path_factory):
    """Fifteen patients: CT at two sites, MR T1/T2 at one (3 held-out test patients)."""
    config = cohort_config({"cohort": {"patients": 15, "seed": 21},
                            "scanner": LEARNING_SCANNERS}, "learning cohort")
    return generate(config, tmp_path_factory.mktemp("learning"))


@pytest.fixture(scope="session")
def trained_run(learning_cohort, tmp_path_factory):
    """A segmentation model trained for at most two CPU minutes (a 1.8-minute budget) on the
    learning cohort; returns (manifest, run result)."""
    result = train_for(learning_cohort, tmp_path_factory.mktemp("segmentation"),
                       'name = "segmentation"',
                       "epochs = 60\nbatch_size = 16\nlr = 0.002\nmax_minutes = 1.8\n"
                       "eval_every = 3")
    return learning_cohort, result


@pytest.fixture
def inside_a_run():
    """Flower messages are made inside a run: give this process the identity a run has."""
    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


@pytest.fixture
def permuted_volume() -> Volume:
    rng = np.random.default_rng(0)
    affine = np.array([[0.0, 0.0, 2.5, -40.0], [-0.8, 0.0, 0.0, 60.0], [0.0, -0.8, 0.0, 120.0],
                       [0, 0, 0, 1]])
    return Volume(rng.integers(-1000, 1500, (12, 10, 6)).astype(np.float32), affine)
