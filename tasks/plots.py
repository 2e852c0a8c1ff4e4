"""PNG plots of what a person would rather look at than a table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tasks.files import atomic, writable_folder
from tasks.imageio import Volume, reorient
from tasks.labels import label_colour, label_name
from tasks.points import to_voxels, to_world


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


def plot_overlay(image: Volume, path: Path, title: str, labels: np.ndarray | None = None,
                 points: list[dict] | None = None) -> Path:
    """A prediction over its image for a person to check: a label map (on the image's grid)
    in the convention's colours and/or labelled points (voxel coordinates of the image).
    3D images show the sagittal, coronal and axial slices through the prediction's centre;
    radiographs show whole."""
    canonical = reorient(image, "RAS") if image.array.ndim == 3 else image
    mask = None
    if labels is not None:
        mask = (reorient(Volume(labels.reshape(image.array.shape), image.affine), "RAS").array
                if image.array.ndim == 3 else labels.reshape(image.array.shape))
    spots = np.zeros((0, 3))
    if points:
        spots = to_voxels(to_world(points, image.affine), canonical.affine)
    names = [str(p.get("label", "")) for p in points or []]
    array = canonical.array
    if array.ndim == 2:
        views = [(array, mask, spots[:, :2], (0, 1))]
    else:
        centre = (np.argwhere(mask > 0).mean(axis=0) if mask is not None and mask.any()
                  else spots.mean(axis=0) if len(spots) else np.array(array.shape) / 2)
        x, y, z = (int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, array.shape,
                                                                      strict=True))
        # Points are projected on the sagittal and coronal planes (a spine runs along both);
        # the axial plane shows those within 15 mm of it.
        near = np.abs(spots[:, 2] - z) * np.linalg.norm(canonical.affine[:3, 2]) <= 15
        views = [(array[x], None if mask is None else mask[x], spots[:, [1, 2]], (1, 2)),
                 (array[:, y], None if mask is None else mask[:, y], spots[:, [0, 2]], (0, 2)),
                 (array[:, :, z], None if mask is None else mask[:, :, z],
                  np.where(near[:, None], spots[:, [0, 1]], np.nan), (0, 1))]
    figure, axes = plt.subplots(1, len(views), figsize=(4 * len(views), 4.4), squeeze=False)
    spacing = np.linalg.norm(canonical.affine[:3, :3], axis=0)
    shown: dict[int, str] = {}
    for axis, (plane, labelled, where, (a, b)) in zip(axes[0], views, strict=True):
        aspect = spacing[b] / spacing[a] if array.ndim == 3 else 1.0
        axis.imshow(plane.T, cmap="gray", origin="lower", aspect=aspect)
        if labelled is not None and labelled.any():
            colours = np.zeros((*plane.shape, 4))
            for value in np.unique(labelled[labelled > 0]):
                colours[labelled == value] = (*label_colour(int(value)), 0.45)
                shown[int(value)] = label_name(int(value))
            axis.imshow(np.transpose(colours, (1, 0, 2)), origin="lower", aspect=aspect)
        for (u, v), name in zip(where, names, strict=True):
            if np.isnan(u):
                continue
            axis.plot(u, v, "o", color="red", markersize=4)
            axis.annotate(label_name(int(name)) if name.isdigit() else name, (u, v),
                          color="yellow", fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_axis_off()
    if shown:
        handles = [plt.Rectangle((0, 0), 1, 1, color=label_colour(v)) for v in sorted(shown)]
        figure.legend(handles, [shown[v] for v in sorted(shown)], loc="lower center",
                      ncol=min(10, len(shown)), fontsize=7)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG atomically (its folder made) and close it."""
    try:
        writable_folder(path.parent)
        with atomic(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    finally:
        plt.close(figure)
    return path
