"""The segmentation model really learns: held-out phantom patients, CT and MR, a fixed
number of epochs (the same model on every machine, however busy)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tasks.checkpoint import load_checkpoint
from tasks.evaluation import evaluate

pytestmark = pytest.mark.slow


def test_segmentation_learns_held_out_ct_and_mr(trained_run):
    """12 epochs take an untrained network's Dice of about 0.1 to at least 0.7 on held-out
    CT and MR patients (0.85 and 0.77 here)."""
    manifest, result = trained_run
    assert len(result.history) == 12
    task, model, _ = load_checkpoint(result.folder / "model.pt")
    evaluation = evaluate(task, model, manifest.select(split="test"), torch.device("cpu"))
    per_image = evaluation.per_image
    assert set(per_image.modality) == {"CT", "MR"}
    assert not set(per_image.patient_id) & set(manifest.select(split="train").table.patient_id)
    for modality, group in per_image.groupby("modality"):
        assert group["dice_mean"].mean() >= 0.7, (modality, group["dice_mean"].tolist())


def test_run_folder_holds_its_stages_outputs(trained_run):
    _, result = trained_run
    for name in ("config.toml", "metrics.csv", "metrics.png", "checkpoint_last.pt", "model.pt",
                 "val_per_image.csv"):
        assert (result.folder / name).is_file(), name
    metrics = pd.read_csv(result.folder / "metrics.csv")
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    assert {"val_dice_vertebra", "val_dice_disc", "val_dice_canal"} <= set(metrics.columns)
