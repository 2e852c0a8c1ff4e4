"""The segmentation model really learns: held-out phantom patients, CT and MR, two CPU minutes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks.checkpoint import load_checkpoint
from tasks.evaluation import evaluate

pytestmark = pytest.mark.slow


def test_two_minutes_of_cpu_training_segment_held_out_ct_and_mr(trained_run):
    manifest, result = trained_run
    assert result.history["seconds"].iloc[-1] <= 120
    task, model, _ = load_checkpoint(result.folder / "model.pt")
    evaluation = evaluate(task, model, manifest.select(split="test"), torch.device("cpu"))
    per_image = evaluation.per_image
    assert set(per_image.modality) == {"CT", "MR"}
    assert not set(per_image.patient_id) & set(manifest.select(split="train").table.patient_id)
    for modality, group in per_image.groupby("modality"):
        assert group["dice_mean"].mean() >= 0.75, (modality, group["dice_mean"].tolist())


def test_run_folder_holds_its_stages_outputs(trained_run):
    _, result = trained_run
    for name in ("config.toml", "metrics.csv", "metrics.png", "checkpoint_last.pt", "model.pt",
                 "val_per_image.csv"):
        assert (result.folder / name).is_file(), name
    metrics = pd.read_csv(result.folder / "metrics.csv")
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    assert {"val_dice_vertebra", "val_dice_disc", "val_dice_canal"} <= set(metrics.columns)
