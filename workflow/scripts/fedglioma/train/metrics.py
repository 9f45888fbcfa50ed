"""Site-aggregated validation metrics: Dice, AUC, confusion counts over a threshold grid.

Thin adapters over :mod:`fedglioma.metrics` (one implementation of each metric) that return ``None``
where a metric cannot be estimated on a small validation split and JSON-ready lists.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from fedglioma import metrics as M

#: The threshold grid (a subject is positive when ``p >= t``), defined once in :mod:`fedglioma.metrics`.
THRESHOLD_GRID = M.THRESHOLD_GRID


def dice_score(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Hard Dice of ``prob >= threshold`` against a binary ``target`` (same shape); 1.0 when both are empty."""
    return M.dice(np.asarray(prob) >= threshold, np.asarray(target) > 0)


def auc_or_none(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC (``y`` 0/1, ``score`` ``(N,)``), or ``None`` when only one class is present."""
    value = M.auc(y, score)
    return None if math.isnan(value) else value


def multiclass_auc_or_none(y: np.ndarray, probs: np.ndarray) -> float | None:
    """One-vs-rest macro AUC (``y`` class index ``(N,)``, ``probs`` ``(N, K)``), or ``None`` unless all K classes occur."""
    y = np.asarray(y, dtype=int)
    k = probs.shape[1] if probs.ndim == 2 else 0
    if y.size == 0 or np.unique(y).size < k:
        return None
    return float(roc_auc_score(y, probs, multi_class="ovr", labels=list(range(k))))


def threshold_counts(
    y: np.ndarray, score: np.ndarray, grid: tuple[float, ...] = THRESHOLD_GRID
) -> dict[str, list[int]]:
    """Confusion counts at each threshold of ``grid`` (positive when ``score >= t``), as JSON-ready lists.

    Args:
        y: ``(N,)`` 0/1 truth.
        score: ``(N,)`` probabilities.

    Returns:
        ``{"tp": [...], "fp": [...], "tn": [...], "fn": [...]}``, each of ``len(grid)`` ints
        (:func:`fedglioma.metrics.confusion_counts`).
    """
    counts = M.confusion_counts(np.asarray(y, dtype=np.float64), score, grid)
    return {k: v.tolist() for k, v in counts.items()}
