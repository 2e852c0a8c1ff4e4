"""TensorBoard scalars: what TensorBoard itself reads back from the event files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tasks.tracking import ScalarLog
from tests.helpers.tracking import mlflow_metrics, mlflow_run_names, scalars


def test_finite_numbers_are_logged_per_run_and_a_resumed_log_goes_on(tmp_path):
    log = ScalarLog(tmp_path)
    log.add("ct-a", 1, {"train_loss": 0.5, "val_dice_mean": math.nan, "hospital": "ct-a",
                        "ok": True})
    log.add("mr-b", 1, {"train_loss": 0.7})
    log.close()
    assert scalars(tmp_path / "tensorboard" / "ct-a") == {"train_loss": [(1, 0.5)]}
    resumed = ScalarLog(tmp_path, fresh=False)
    resumed.add("ct-a", 2, {"train_loss": 0.25})
    resumed.close()
    assert scalars(tmp_path / "tensorboard" / "ct-a") == {"train_loss": [(1, 0.5), (2, 0.25)]}
    # MLflow (installed with the dev extras): the same runs, the resumed one continued.
    assert mlflow_metrics(tmp_path / "mlruns", "ct-a") == {"train_loss": [(1, 0.5), (2, 0.25)]}
    assert mlflow_metrics(tmp_path / "mlruns", "mr-b") == {"train_loss": [(1, 0.7)]}
    assert mlflow_run_names(tmp_path / "mlruns") == {"ct-a", "mr-b"}
    ScalarLog(tmp_path).close()  # a run started over
    assert not (tmp_path / "tensorboard").exists()
    assert mlflow_run_names(tmp_path / "mlruns") == set()


@pytest.mark.slow  # a real training run
def test_spinefl_train_logs_what_metrics_csv_holds(tiny_cohort, tmp_path):
    from tests.helpers.training import train_for

    result = train_for(tiny_cohort, tmp_path, 'name = "segmentation"',
                       "epochs = 2\nbatch_size = 16")
    table = pd.read_csv(result.folder / "metrics.csv")
    logged = scalars(result.folder / "tensorboard" / "train")
    tracked = mlflow_metrics(result.folder / "mlruns", "train")  # float64; TensorBoard float32
    assert {k: [(s, pytest.approx(v, rel=1e-6)) for s, v in series]
            for k, series in tracked.items()} == logged
    for column in ("train_loss", "val_dice_mean", "lr"):
        if column not in table:
            continue
        expected = [(int(e), v) for e, v in zip(table.epoch, table[column], strict=True)
                    if math.isfinite(v)]
        assert [(s, pytest.approx(v)) for s, v in logged[column]] == expected, column
    assert "train_loss" in logged and len(logged["train_loss"]) == 2
