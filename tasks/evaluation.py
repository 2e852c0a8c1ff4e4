"""Evaluation, the same loop for every task: score each image, then pool the scores.

Beside the task's own metrics, every task reports its score per modality it was
trained on (``<score>_<modality>``, e.g. ``dice_mean_MR``).
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from torch import nn

from tasks.contract import Evaluation, ImageScore, Task
from tasks.manifest import Manifest


def metric_names(task: Task) -> tuple[str, ...]:
    """Every key ``evaluate`` returns for ``task``."""
    modalities = [f"{task.score}_{m}" for m in task.settings.get("modalities", [])]
    return tuple(dict.fromkeys([*task.metric_names(), *modalities]))


def evaluate(task: Task, model: nn.Module, manifest: Manifest, device: torch.device
             ) -> Evaluation:
    """``task``'s metrics of ``model`` on every row of ``manifest`` it can use, as predict
    would produce them, and one row of metrics per image."""
    rows, scores = [], []
    for row in task.select(manifest).rows():
        start = time.perf_counter()
        score = task.score_image(model, manifest, row, device)
        if score is None:
            continue
        rows.append({"patient_id": row["patient_id"], "image": row["image"],
                     "modality": row["modality"], "site": row["site"], **score.metrics,
                     "seconds": time.perf_counter() - start})
        scores.append(score)
    metrics = dict.fromkeys(metric_names(task), float("nan"))
    if scores:
        metrics.update(task.summarise(scores))
        for modality in task.settings.get("modalities", []):
            chosen = [s for s, r in zip(scores, rows, strict=True) if r["modality"] == modality]
            if chosen:
                metrics[f"{task.score}_{modality}"] = task.summarise(chosen)[task.score]
    return Evaluation(metrics, pd.DataFrame(rows))


def score_rows(scores: list[ImageScore], names: tuple[str, ...]) -> dict[str, float]:
    """The mean of each named per-image metric over ``scores`` (NaNs skipped)."""
    frame = pd.DataFrame([s.metrics for s in scores])
    return {name: float(frame[name].mean(skipna=True)) for name in names if name in frame}
