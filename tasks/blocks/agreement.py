"""How predicted grades and scores agree with the truth: accuracy, quadratic weighted kappa
(ordinal grades: Pfirrmann, Genant) and the area under the ROC curve (a binary finding)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of equal labels."""
    return float(np.mean(predicted == truth)) if len(truth) else float("nan")


def quadratic_kappa(predicted: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Cohen's kappa with quadratic weights for labels 0..classes-1 (1 = perfect, 0 = chance)."""
    if not len(truth):
        return float("nan")
    observed = np.zeros((classes, classes))
    np.add.at(observed, (truth, predicted), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.meshgrid(np.arange(classes), np.arange(classes), indexing="ij")
    weights = (i - j) ** 2 / (classes - 1) ** 2
    disagreement = (weights * expected).sum()
    if disagreement == 0:
        return 1.0 if (weights * observed).sum() == 0 else 0.0
    return float(1.0 - (weights * observed).sum() / disagreement)


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean truth ``positive``: the chance
    that a random positive scores above a random negative, ties counting half (the
    Mann-Whitney statistic). NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
