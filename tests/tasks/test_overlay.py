"""The QC picture `predict --qc` writes: the prediction drawn over its image."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from tasks.imageio import Volume
from tasks.labels import label_colour
from tasks.plots import plot_overlay


def _pixels_near(path, colour, tolerance=0.06) -> int:
    """How many pixels of the PNG are within ``tolerance`` of ``colour`` (RGB 0-1)."""
    rgb = mpimg.imread(path)[..., :3]
    return int((np.abs(rgb - np.array(colour)).max(axis=-1) < tolerance).sum())


def test_a_label_map_is_drawn_in_its_convention_colour_on_every_plane(tmp_path):
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(0.5, 0.01, (40, 40, 40)), np.diag([1.0, 1.0, 2.0, 1.0]))
    labels = np.zeros((40, 40, 40), np.int16)
    labels[10:30, 12:28, 8:32] = 20  # L1
    plain = plot_overlay(image, tmp_path / "plain.png", "no prediction")
    drawn = plot_overlay(image, tmp_path / "drawn.png", "L1", labels=labels)
    # L1 at 45 % over mid-grey: its colour blended, present only where a prediction is drawn.
    blended = 0.45 * np.array(label_colour(20)) + 0.55 * np.array([0.5, 0.5, 0.5])
    assert _pixels_near(plain, blended) == 0
    assert _pixels_near(drawn, blended) > 3 * 2000  # a patch in each of the three planes


def test_labelled_points_are_marked_on_a_radiograph(tmp_path):
    image = Volume(np.full((60, 80), 0.2), np.eye(4))
    points = [{"X": 30.0, "Y": 40.0, "label": 20}, {"X": 10.0, "Y": 10.0, "label": "L4/L5 P3"}]
    path = plot_overlay(image, tmp_path / "points.png", "two points", points=points)
    assert _pixels_near(path, (1.0, 0.0, 0.0), 0.15) > 10  # the red markers
    assert _pixels_near(plot_overlay(image, tmp_path / "none.png", "none"),
                        (1.0, 0.0, 0.0), 0.15) == 0
