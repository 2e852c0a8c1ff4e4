"""TensorBoard scalars: what TensorBoard itself reads back from the event files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tasks.tracking import ScalarLog
from tests.helpers.tracking import scalars


def test_finite_numbers_are_logged_per_run_and_a_resumed_log_goes_on(tmp_path):
    log = ScalarLog(tmp_path / "tb")
    log.add("ct-a", 1, {"train_loss": 0.5, "val_dice_mean": math.nan, "hospital": "ct-a",
                        "ok": True})
    log.add("mr-b", 1, {"train_loss": 0.7})
    log.close()
    assert scalars(tmp_path / "tb" / "ct-a") == {"train_loss": [(1, 0.5)]}
    resumed = ScalarLog(tmp_path / "tb", fresh=False)
    resumed.add("ct-a", 2, {"train_loss": 0.25})
    resumed.close()
    assert scalars(tmp_path / "tb" / "ct-a") == {"train_loss": [(1, 0.5), (2, 0.25)]}
    ScalarLog(tmp_path / "tb").close()  # a run started over
    assert not (tmp_path / "tb").exists()


@pytest.mark.slow  # a real training run
def test_spinefl_train_logs_what_metrics_csv_holds(tiny_cohort, tmp_path):
    from tests.helpers.training import train_for

    result = train_for(tiny_cohort, tmp_path, 'name = "segmentation"',
                       "epochs = 2\nbatch_size = 16")
    table = pd.read_csv(result.folder / "metrics.csv")
    logged = scalars(result.folder / "tensorboard" / "train")
    for column in ("train_loss", "val_dice_mean", "lr"):
        if column not in table:
            continue
        expected = [(int(e), v) for e, v in zip(table.epoch, table[column], strict=True)
                    if math.isfinite(v)]
        assert [(s, pytest.approx(v)) for s, v in logged[column]] == expected, column
    assert "train_loss" in logged and len(logged["train_loss"]) == 2
