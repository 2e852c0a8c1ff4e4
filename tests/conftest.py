"""Shared fixtures: small phantom cohorts made on the spot (no download, no GPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate
from tasks.imageio import Volume
from tests.helpers.cohorts import CT_MR_SCANNERS, LEARNING_SCANNERS, XRAY_SCANNER
from tests.helpers.training import train_for


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, workers share the cores: each worker's torch, and the processes
    its tests start (Flower nodes, Ray actors, through OMP_NUM_THREADS), takes its share.
    Torch's spinning threads slow down several-fold when more are busy than there are cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# Session fixtures that train or generate for minutes: their users share one worker.
SHARED_ON_ONE_WORKER = {"learning_cohort", "trained_run"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup``, each run whole on one worker: a
    module's tests (so a module-scoped fixture, a running federation, is made once), and
    all users of an expensive session fixture together."""
    for item in items:
        fixtures = item._fixtureinfo.name2fixturedefs
        shared = SHARED_ON_ONE_WORKER & set(fixtures)
        item.add_marker(pytest.mark.xdist_group("learning-cohort" if shared
                                                else item.module.__name__))


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
    """A small segmentation U-Net trained a fixed 12 epochs (cosine schedule, so every
    machine trains the same model; 1.5 minutes on one thread here) on the learning
    cohort; returns (manifest, run result)."""
    result = train_for(learning_cohort, tmp_path_factory.mktemp("segmentation"),
                       'name = "segmentation"\nchannels = [8, 16, 32, 64]\n'
                       "spacing = [2.5, 2.5, 2.5]\npatch_size = [48, 48, 48]",
                       "epochs = 12\nbatch_size = 16\nlr = 0.005\nschedule = \"cosine\"\n"
                       "eval_every = 4")
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
