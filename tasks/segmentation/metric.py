"""Segmentation metrics per class and per structure, computed with MONAI."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

from tasks.blocks.classes import ClassTable
from tasks.labels import STRUCTURES


def segmentation_metrics(predicted: np.ndarray, truth: np.ndarray, table: ClassTable,
                         spacing: tuple[float, ...], hd95: bool = False) -> dict[str, float]:
    """Dice per class and mean Dice per structure for one image (class-index arrays).

    A class absent from the truth has no Dice (NaN) and is left out of the means.
    ``dice_mean`` is the mean over the structures present (vertebra, disc, canal).
    """
    shape = (1, 1, *truth.shape)
    pred = one_hot(torch.as_tensor(predicted.astype(np.int64)).reshape(shape), table.count)
    true = one_hot(torch.as_tensor(truth.astype(np.int64)).reshape(shape), table.count)
    dice = compute_dice(pred, true, include_background=False, ignore_empty=True)[0].numpy()
    metrics: dict[str, float] = {}
    for index, name in enumerate(table.names[1:]):
        metrics[f"dice_{name.replace('/', '-')}"] = float(dice[index])
    structure_means = []
    for structure in STRUCTURES:
        members = [dice[i - 1] for i, s in enumerate(table.structures) if s == structure]
        present = [d for d in members if not np.isnan(d)]
        value = float(np.mean(present)) if present else float("nan")
        metrics[f"dice_{structure}"] = value
        structure_means.append(value)
    present = [v for v in structure_means if not np.isnan(v)]
    metrics["dice_mean"] = float(np.mean(present)) if present else float("nan")
    if hd95:
        distance = compute_hausdorff_distance(pred, true, percentile=95, spacing=list(spacing))
        metrics["hd95_mean"] = float(np.nanmean(distance[0].numpy()))
    return metrics
