"""Cobb angle metrics: circular mean absolute error and the AASCE SMAPE.

Cobb angles are angles between lines, so an error is taken modulo 180 degrees
(``angle_between``). The AASCE 2019 challenge scores with the symmetric mean
absolute percentage error over images i and their angles j (PT, MT, TL):
SMAPE = 100 / N * sum_i (sum_j |p_ij - t_ij| / sum_j (p_ij + t_ij)); an image
whose angles are all zero in both prediction and truth contributes 0.
"""

from __future__ import annotations

import numpy as np

from tasks.cobb.geometry import angle_between


def circular_mae(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute angular error in degrees, errors taken modulo 180."""
    errors = [angle_between(p, t) for p, t in zip(np.ravel(predicted), np.ravel(truth),
                                                   strict=True)]
    return float(np.mean(errors)) if errors else float("nan")


def smape(predicted: np.ndarray, truth: np.ndarray) -> float:
    """AASCE SMAPE in percent of (N, K) predicted and true angles (K angles per image)."""
    p = np.atleast_2d(np.asarray(predicted, dtype=float))
    t = np.atleast_2d(np.asarray(truth, dtype=float))
    if p.size == 0:
        return float("nan")
    numerator = np.abs(p - t).sum(axis=1)
    denominator = (p + t).sum(axis=1)
    ratio = np.divide(numerator, denominator, out=np.zeros_like(numerator),
                      where=denominator > 0)
    return float(100.0 * ratio.mean())
