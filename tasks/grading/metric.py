"""Grading metrics beside accuracy and kappa (``tasks/blocks/agreement.py``): the RSNA 2024
weighted log loss.

RSNA 2024 scores each condition with a log loss weighted 1, 2 and 4 for
normal/mild, moderate and severe true labels (each row of predictions is
first normalised to sum to 1, then sklearn's ``log_loss`` with sample weights:
probabilities clipped to [1e-15, 1 - 1e-15], the weighted mean over samples),
plus 'any severe spinal canal stenosis' per study: the true label is whether
any level is severe, the prediction the largest severe probability over the
levels, weighted 1 (no) and 4 (yes).
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-15


def weighted_log_loss(probabilities: np.ndarray, truth: np.ndarray,
                      weights: tuple[float, ...]) -> float:
    """Log loss of (N, C) probabilities for labels 0..C-1, each sample weighted by its label's
    weight; rows normalised to sum to 1, then clipped to [1e-15, 1 - 1e-15]."""
    if not len(truth):
        return float("nan")
    p = probabilities / probabilities.sum(axis=1, keepdims=True)
    p = np.clip(p, EPSILON, 1 - EPSILON)
    sample_weights = np.asarray(weights)[truth]
    losses = -np.log(p[np.arange(len(truth)), truth])
    return float((sample_weights * losses).sum() / sample_weights.sum())


def any_severe_log_loss(severe_probability: np.ndarray, studies: np.ndarray,
                        severity: np.ndarray) -> float:
    """RSNA's 'any severe spinal' term: per study, max severe probability vs any severe level."""
    names = np.unique(studies)
    if not len(names):
        return float("nan")
    predicted = np.array([severe_probability[studies == s].max() for s in names])
    truth = np.array([int((severity[studies == s] == 2).any()) for s in names])
    return weighted_log_loss(np.c_[1 - predicted, predicted], truth, (1.0, 4.0))
