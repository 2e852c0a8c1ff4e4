"""Shared fixtures: small phantom cohorts made on the spot (no download, no GPU)."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity

from simulation.phantoms.config import cohort_config
from simulation.phantoms.generator import generate

CT_MR_SCANNERS = [
    {"name": "ct-a", "modality": "CT", "spacing": [1.5, 1.5, 2.0], "fov": 120.0, "noise": 15.0},
    {"name": "mr-b", "modality": "MR", "sequences": ["T2"], "spacing": [1.5, 1.5, 3.0],
     "fov": 120.0, "scale": 800.0, "noise": 0.03, "bias": 0.2},
    {"name": "ct-c", "modality": "CT", "spacing": [1.2, 1.2, 2.5], "fov": 120.0, "noise": 30.0,
     "offset": -20.0, "orientation": "LPS"},
]


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Nine patients on two CT scanners and one MR scanner (a train, val and test patient each)."""
    config = cohort_config({"cohort": {"patients": 9, "seed": 3}, "scanner": CT_MR_SCANNERS},
                           "tiny cohort")
    return generate(config, tmp_path_factory.mktemp("tiny"))


LEARNING_SCANNERS = [
    {**CT_MR_SCANNERS[0]},
    {**CT_MR_SCANNERS[1], "sequences": ["T1", "T2"]},
    {**CT_MR_SCANNERS[2]},
]


XRAY_SCANNER = {"name": "xr-a", "modality": "XR", "views": ["AP"], "spacing": [1.2, 1.2, 1.2],
                "noise": 0.03, "blur": 0.8}


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


def train_for(manifest, folder, task_lines: str, train_lines: str):
    """Train a task on ``manifest`` with ``spinefl train``'s code path; returns the run result."""
    from tasks.training import load_run_config, train

    run_config = folder / "run.toml"
    run_config.write_text(f"""
[data]
manifest = "{manifest.root / 'manifest.csv'}"
[task]
{task_lines}
[train]
{train_lines}
[output]
dir = "{folder / 'run'}"
""")
    return train(load_run_config(run_config))


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
