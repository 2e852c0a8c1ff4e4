"""`spinefl evaluate`: a trained model's metrics on any manifest, outside training.

The same evaluation training runs on its validation rows (tasks/evaluation.py), on the
rows of a chosen split, written to ``--out``:

- ``metrics.csv``: the task's metrics over the images (as training reports them), with
  the model, manifest, split and number of images;
- ``per_image.csv``: one row per image (patient, image, modality, site, its metrics);
- ``scores.png``: each image's score by site and modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.checkpoint import load_checkpoint
from tasks.contract import Evaluation
from tasks.device import select_device
from tasks.errors import UserError
from tasks.evaluation import evaluate
from tasks.files import write_table
from tasks.locks import folder_lock
from tasks.manifest import SPLITS, Manifest
from tasks.plots import plot_image_scores

CHOICES = (*SPLITS, "all")
RESULTS = ("metrics.csv", "per_image.csv", "scores.png")
# Columns of the per-image table that say which image, not how well.
IDENTITY = ("patient_id", "image", "modality", "site", "seconds")


@dataclass
class Scored:
    """What ``score_model`` wrote, the evaluation itself, and the per-image metric plotted."""

    out: Path
    evaluation: Evaluation
    metric: str


def score_model(model: Path, manifest: Path, split: str, out: Path, device: str = "auto",
                force: bool = False) -> Scored:
    """Evaluate the checkpoint ``model`` on the ``split`` rows of ``manifest`` (every row
    for "all") and write the results to ``out``."""
    if split not in CHOICES:
        raise UserError(f"--split must be one of {', '.join(CHOICES)}, got '{split}'")
    task, net, _ = load_checkpoint(model)
    table = Manifest.load(manifest)
    table.check_geometry(manifest)
    rows = table if split == "all" else table.select(split=split)
    usable = task.select(rows)
    if len(usable) == 0:
        modalities = ", ".join(task.settings.get("modalities", [])) or "any"
        raise UserError(f"{manifest}: no {split} rows that a {task.name} model ({modalities}) "
                        f"can score ({len(rows)} {split} rows in all)")
    with folder_lock(out):
        done = [name for name in RESULTS if (out / name).exists()]
        if done and not force:
            raise UserError(f"{out}: holds an evaluation ({done[0]}); --force replaces it")
        chosen = select_device(device)
        net.to(chosen)
        evaluation = evaluate(task, net, usable, chosen)
        summary = {"model": str(model), "manifest": str(manifest), "split": split,
                   "images": len(evaluation.per_image), **evaluation.metrics}
        write_table(pd.DataFrame([summary]), out / "metrics.csv")
        write_table(evaluation.per_image, out / "per_image.csv")
        metric = _plotted(evaluation.per_image, task.score)
        plot_image_scores(evaluation.per_image, metric, out / "scores.png",
                          f"{task.name} on {split}")
    return Scored(out, evaluation, metric)


def _plotted(per_image: pd.DataFrame, score: str) -> str:
    """The task's score where images carry it, else their first numeric metric."""
    if score in per_image:
        return score
    numeric = [c for c in per_image.columns if c not in IDENTITY
               and pd.api.types.is_numeric_dtype(per_image[c])]
    return numeric[0] if numeric else "seconds"
