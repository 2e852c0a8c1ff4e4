"""Learning-rate schedules: the cosine decay, and a run that follows it."""

from __future__ import annotations

import pytest
import torch

from client.trainer import cosine_lr, run_share
from tests.helpers.training import train_for


def test_cosine_decay_and_the_share_of_a_run_behind():
    assert cosine_lr(0.01, 0.0) == pytest.approx(0.01)
    assert cosine_lr(0.01, 0.5) == pytest.approx(0.005)
    assert cosine_lr(0.01, 1.0) == pytest.approx(0.0)
    assert run_share(5, 10, elapsed=30.0, budget=0.0) == 0.5
    assert run_share(5, 10, elapsed=30.0, budget=40.0) == 0.75  # the budget ends first
    assert run_share(10, 10, elapsed=90.0, budget=40.0) == 1.0


def test_a_cosine_run_ends_at_a_learning_rate_of_zero(tiny_cohort, tmp_path):
    result = train_for(tiny_cohort, tmp_path, 'name = "segmentation"',
                       'epochs = 2\nbatch_size = 16\nlr = 0.01\nschedule = "cosine"')
    state = torch.load(result.folder / "checkpoint_last.pt", weights_only=False)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [pytest.approx(0.0)]
