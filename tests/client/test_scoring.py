"""`spinefl evaluate` on an untrained checkpoint (seconds): what it writes and refuses.
That its metrics are training's own is shown on a trained model in tests/e2e/test_prediction.py."""

from __future__ import annotations

import pandas as pd
import pytest

from client.scoring import score_model
from tasks.manifest import Manifest
from tests.helpers.cli import assert_one_line_error, spinefl
from tests.helpers.task_defaults import untrained_segmentation


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return untrained_segmentation(tmp_path_factory.mktemp("model"))


def test_every_test_image_is_scored_and_summarised_with_a_plot(model, tiny_cohort, tmp_path):
    manifest = tiny_cohort.root / "manifest.csv"
    scored = score_model(model, manifest, "test", tmp_path / "eval")
    test_rows = Manifest.load(manifest).select(split="test")
    per_image = pd.read_csv(tmp_path / "eval" / "per_image.csv")
    assert sorted(per_image.image) == sorted(test_rows.table.image)
    metrics = pd.read_csv(tmp_path / "eval" / "metrics.csv").iloc[0]
    assert metrics.split == "test" and metrics.images == len(test_rows)
    assert metrics.dice_mean == pytest.approx(scored.evaluation.metrics["dice_mean"])
    assert metrics.dice_mean == pytest.approx(per_image.dice_mean.mean())
    assert (tmp_path / "eval" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    everything = score_model(model, manifest, "all", tmp_path / "all")
    assert len(everything.evaluation.per_image) == len(Manifest.load(manifest))


@pytest.mark.slow  # five real `spinefl evaluate` runs
def test_the_command_refuses_in_one_line(model, tiny_cohort, tiny_xray, tmp_path):
    manifest = tiny_cohort.root / "manifest.csv"
    out = tmp_path / "eval"

    def evaluate(*extra: str, using=manifest):
        return spinefl("evaluate", "--model", str(model), "--manifest", str(using), "--out",
                       str(out), *extra)

    assert_one_line_error(evaluate("--split", "holdout"), "--split must be one of")
    assert_one_line_error(evaluate(using=tiny_xray.root / "manifest.csv"),
                          "no test rows that a segmentation model (CT, MR) can score")
    done = evaluate()
    assert done.returncode == 0, done.stderr
    assert "dice_mean" in done.stdout
    assert len(pd.read_csv(out / "per_image.csv")) == len(Manifest.load(manifest).select(
        split="test"))
    assert_one_line_error(evaluate(), "holds an evaluation", "--force")
    assert evaluate("--force").returncode == 0
