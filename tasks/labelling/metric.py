"""VerSe's labelling metrics: identification rate and localisation distance.

A ground-truth vertebra is identified when the predicted centroid closest to
it carries its label and lies within ``radius`` mm (VerSe: 20 mm). The
localisation distance is the distance between a ground-truth centroid and
the predicted centroid of the same label, over the vertebrae both have.
Across images both are pooled over vertebrae (``pool``).
"""

from __future__ import annotations

import numpy as np

from tasks.labelling.centroids import Centroids


def identification(predicted: Centroids, truth: Centroids, radius: float = 20.0
                   ) -> dict[str, float]:
    """Counts for one image: vertebrae, identified, predicted, and the summed distance of the
    matched labels (``distance_sum`` over ``matched``)."""
    identified = 0
    labels = list(predicted)
    points = np.array([predicted[v] for v in labels]).reshape(-1, 3)
    for label, point in truth.items():
        if not labels:
            break
        distances = np.linalg.norm(points - point, axis=1)
        nearest = int(np.argmin(distances))
        identified += labels[nearest] == label and distances[nearest] <= radius
    matched = [float(np.linalg.norm(predicted[v] - truth[v])) for v in truth if v in predicted]
    return {"vertebrae": float(len(truth)), "identified": float(identified),
            "predicted": float(len(predicted)), "matched": float(len(matched)),
            "distance_sum": float(sum(matched))}


def rates(counts: dict[str, float]) -> dict[str, float]:
    """Identification rate and mean localisation distance (mm) from (summed) counts."""
    id_rate = counts["identified"] / counts["vertebrae"] if counts["vertebrae"] else np.nan
    distance = counts["distance_sum"] / counts["matched"] if counts["matched"] else np.nan
    return {"id_rate": float(id_rate), "localisation_mm": float(distance)}


def pool(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Identification rate and localisation distance over all vertebrae of all images."""
    keys = ("vertebrae", "identified", "predicted", "matched", "distance_sum")
    return rates({k: sum(row[k] for row in per_image) for k in keys})
