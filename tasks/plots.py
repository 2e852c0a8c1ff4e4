"""PNG plots of what a person would rather look at than a table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tasks.files import atomic


def plot_history(history: pd.DataFrame, path: Path, score: str) -> Path:
    """Training loss and the validation score per epoch, side by side."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(history["epoch"], history["train_loss"], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    if score in history:
        valid = history.dropna(subset=[score])
        right.plot(valid["epoch"], valid[score], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel=score, title="Validation", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    save_figure(figure, path)
    return path


def plot_image_scores(per_image: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    """Each image's ``metric``, one column of points per site and modality, the median
    marked."""
    groups = list(per_image.groupby(["site", "modality"])) if len(per_image) else []
    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 2), 4))
    for i, (_, group) in enumerate(groups):
        values = group[metric].dropna()
        axis.scatter([i] * len(values), values, alpha=0.6)
        if len(values):
            axis.hlines(values.median(), i - 0.3, i + 0.3, color="black")
    axis.set_xticks(range(len(groups)),
                    [f"{site}\n{modality}\n({len(g)})" for (site, modality), g in groups])
    axis.set(ylabel=metric, title=title)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return save_figure(figure, path)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG atomically and close it."""
    try:
        with atomic(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    finally:
        plt.close(figure)
    return path
