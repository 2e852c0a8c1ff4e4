"""PNG plots of what a person would rather look at than a table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


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
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
