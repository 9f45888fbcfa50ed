"""Site-aggregated validation metrics: Dice, AUC (sklearn), confusion counts over a threshold grid."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

#: Fixed threshold grid 0.00, 0.01, ..., 1.00 (a subject is positive when ``p >= t``).
THRESHOLD_GRID: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))


def dice_score(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Hard Dice of ``prob >= threshold`` against a binary ``target`` (same shape); 1.0 when both are empty."""
    p = prob >= threshold
    g = target > 0
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def auc_or_none(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC (``y`` 0/1, ``score`` ``(N,)``), or ``None`` when only one class is present."""
    y = np.asarray(y)
    if y.size == 0 or np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y, score))


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
    """Confusion counts at each threshold of ``grid`` (positive when ``score >= t``).

    Args:
        y: ``(N,)`` 0/1 truth.
        score: ``(N,)`` probabilities.

    Returns:
        ``{"tp": [...], "fp": [...], "tn": [...], "fn": [...]}``, each of ``len(grid)`` ints.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    t = np.asarray(grid, dtype=np.float64)
    pred = s[None, :] >= t[:, None]  # (T, N)
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    return {
        "tp": tp.tolist(),
        "fp": fp.tolist(),
        "tn": (int((~y).sum()) - fp).tolist(),
        "fn": (int(y.sum()) - tp).tolist(),
    }
