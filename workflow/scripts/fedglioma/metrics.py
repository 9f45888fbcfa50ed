"""Metric functions on arrays: segmentation overlap/distance/volume and classification with bootstrap CIs.

Conventions (see ``docs/evaluation.md``):

- Masks are binary arrays of equal shape; ``spacing`` is the voxel size in mm along each array axis.
- Classification labels are 0/1 (grade: 2/3/4) with ``NaN`` meaning *missing*; a subject without a label is left
  out of that marker only, and every result carries the ``n``, ``n_pos`` and ``n_neg`` behind it.
- A marker with a single class present is *not estimable*: the result is ``{"estimable": False, "reason": ...}``
  rather than an exception or a made-up number.
- Bootstrap resampling is stratified (each class is resampled separately, so every replicate keeps the observed
  class counts), uses a seeded :class:`numpy.random.Generator`, and the CI is the percentile interval.
- Thresholds are chosen *only* from summed confusion counts of the training sites
  (:func:`choose_threshold_from_counts`); thresholded metrics take the threshold as an argument.
- scikit-learn is imported inside the functions that use it: the QC step and the ``fedglioma`` command line
  import this module (Dice, the threshold grid) and must not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from scipy.stats import rankdata

from fedglioma.errors import ConfigError

#: Default number of bootstrap replicates (the brief asks for at least 1000).
DEFAULT_N_BOOT = 2000
#: Default confidence level of every interval.
DEFAULT_LEVEL = 0.95
#: Fixed FPR grid on which bootstrap ROC bands are given.
FPR_GRID: NDArray[np.float64] = np.linspace(0.0, 1.0, 51)


# --------------------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------------------


class Distance(NamedTuple):
    """A surface distance in mm, or ``NaN`` with the reason it is undefined."""

    value: float
    reason: str | None = None


def _check_masks(pred: ArrayLike, truth: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    a = np.asarray(pred).astype(bool, copy=False)
    b = np.asarray(truth).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: predicted {a.shape} vs reference {b.shape}")
    return a, b


def _check_spacing(spacing: Sequence[float], ndim: int) -> NDArray[np.float64]:
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (mm), got {list(np.atleast_1d(spacing))}")
    return s


def dice(pred: ArrayLike, truth: ArrayLike) -> float:
    """Dice similarity coefficient ``2|A∩B| / (|A|+|B|)`` of two binary masks.

    Both masks empty is perfect agreement and gives 1.0 (the BraTS convention).

    >>> dice(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.5
    """
    a, b = _check_masks(pred, truth)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def surface(mask: ArrayLike) -> NDArray[np.bool_]:
    """Surface voxels of a binary mask: voxels of the mask with at least one face neighbour outside it.

    Voxels on the array border count as surface (outside the array is background).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if not m.any():
        return np.zeros_like(m)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(
    pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Directed surface distances in mm: (each predicted surface voxel -> reference surface,
    each reference surface voxel -> predicted surface).

    Uses :func:`scipy.ndimage.distance_transform_edt` with ``sampling=spacing`` on the bounding box of both masks
    (exact: every surface voxel lies inside it). Both masks must be non-empty.
    """
    a, b = _check_masks(pred, truth)
    s = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    union = a | b
    lo = [int(np.flatnonzero(union.any(axis=tuple(j for j in range(a.ndim) if j != i))).min()) for i in range(a.ndim)]
    hi = [int(np.flatnonzero(union.any(axis=tuple(j for j in range(a.ndim) if j != i))).max()) for i in range(a.ndim)]
    # one voxel of margin (clipped at the array border) so the crop border does not create surface
    box = tuple(slice(max(lo[i] - 1, 0), min(hi[i] + 2, a.shape[i])) for i in range(a.ndim))
    sa, sb = surface(a[box]), surface(b[box])
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=s)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=s)
    return np.asarray(dist_to_b[sa], dtype=np.float64), np.asarray(dist_to_a[sb], dtype=np.float64)


def hausdorff_distance(
    pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float], *, percentile: float = 95.0
) -> Distance:
    """Symmetric percentile Hausdorff distance in mm between the surfaces of two masks.

    ``max(P(d(pred->truth)), P(d(truth->pred)))`` with ``P`` the given percentile of the directed surface
    distances (the MONAI / BraTS convention; ``percentile=100`` is the classical Hausdorff distance).

    Empty masks: the distance is undefined and the result is ``NaN`` with a reason
    (``"both masks empty"``, ``"predicted mask empty"`` or ``"reference mask empty"``).
    """
    a, b = _check_masks(pred, truth)
    _check_spacing(spacing, a.ndim)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    empty_a, empty_b = not a.any(), not b.any()
    if empty_a and empty_b:
        return Distance(float("nan"), "both masks empty")
    if empty_a:
        return Distance(float("nan"), "predicted mask empty")
    if empty_b:
        return Distance(float("nan"), "reference mask empty")
    d_ab, d_ba = surface_distances(a, b, spacing)
    return Distance(float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))))


def hd95(pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float]) -> Distance:
    """95th-percentile Hausdorff distance in mm (see :func:`hausdorff_distance`)."""
    return hausdorff_distance(pred, truth, spacing, percentile=95.0)


def volume_ml(mask: ArrayLike, spacing: Sequence[float]) -> float:
    """Volume of a binary mask in mL (1 mL = 1000 mm³)."""
    m = np.asarray(mask).astype(bool, copy=False)
    s = _check_spacing(spacing, m.ndim)
    return float(m.sum() * np.prod(s) / 1000.0)


def volume_difference_ml(pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float]) -> float:
    """Signed volume difference ``V(pred) - V(truth)`` in mL (positive: over-segmentation)."""
    a, b = _check_masks(pred, truth)
    return volume_ml(a, spacing) - volume_ml(b, spacing)


#: HD95 given when exactly one mask is empty (the BraTS challenge convention: the diagonal of the
#: 240 x 240 x 155 1 mm BraTS volume, in mm); both empty gives 0.
BRATS_HD95_PENALTY_MM = 373.13


def segmentation_metrics(
    pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float], *, empty_penalty_mm: float | None = BRATS_HD95_PENALTY_MM
) -> dict[str, Any]:
    """Per-subject segmentation row: ``dice``, ``hd95`` (mm), ``hd95_reason``, ``volume_diff_ml`` (pred - truth),
    ``volume_pred_ml``, ``volume_true_ml``.

    An empty mask leaves HD95 undefined; with ``empty_penalty_mm`` (default, the BraTS convention) it is the
    penalty when exactly one mask is empty and 0 when both are, so a missed tumour counts as the worst case
    instead of dropping out of the median; ``hd95_reason`` says so. With ``None`` it is NaN.
    """
    a, b = _check_masks(pred, truth)
    h = hd95(a, b, spacing)
    value, reason = h.value, h.reason or ""
    if h.reason and empty_penalty_mm is not None:
        value = 0.0 if h.reason == "both masks empty" else float(empty_penalty_mm)
        reason = f"{h.reason}: BraTS convention {value:g} mm"
    return {
        "dice": dice(a, b),
        "hd95": value,
        "hd95_reason": reason,
        "volume_diff_ml": volume_difference_ml(a, b, spacing),
        "volume_pred_ml": volume_ml(a, spacing),
        "volume_true_ml": volume_ml(b, spacing),
    }


def summarise_values(values: ArrayLike) -> dict[str, Any]:
    """Distribution summary of per-subject values; ``NaN`` values are counted in ``n_undefined`` and left out.

    Returns ``n`` (defined values), ``n_undefined``, ``median``, ``mean``, ``q1``, ``q3``, ``iqr``, ``min``,
    ``max`` (NaN when ``n == 0``).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = v[np.isfinite(v)]
    out: dict[str, Any] = {"n": int(ok.size), "n_undefined": int(v.size - ok.size)}
    if ok.size == 0:
        out.update({k: float("nan") for k in ("median", "mean", "q1", "q3", "iqr", "min", "max")})
        return out
    q1, med, q3 = np.percentile(ok, [25, 50, 75])
    out.update(
        median=float(med),
        mean=float(ok.mean()),
        q1=float(q1),
        q3=float(q3),
        iqr=float(q3 - q1),
        min=float(ok.min()),
        max=float(ok.max()),
    )
    return out


# --------------------------------------------------------------------------------------------------------------
# classification: inputs, counts, bootstrap
# --------------------------------------------------------------------------------------------------------------


def labelled(y: ArrayLike, *scores: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Drop subjects whose label (or any score) is missing (``NaN``); returns ``(y, *scores)`` filtered."""
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    ss = [np.asarray(s, dtype=np.float64) for s in scores]
    for s in ss:
        if s.shape[0] != yy.shape[0]:
            raise ValueError(f"labels ({yy.shape[0]}) and scores ({s.shape[0]}) differ in length")
    keep = np.isfinite(yy)
    for s in ss:
        keep &= np.all(np.isfinite(s), axis=tuple(range(1, s.ndim)))  # every column of a row finite
    return (yy[keep], *(s[keep] for s in ss))


def class_counts(y: ArrayLike) -> dict[str, int]:
    """``n``, ``n_pos`` and ``n_neg`` of 0/1 labels (missing labels must already be removed)."""
    yy = np.asarray(y).reshape(-1)
    n_pos = int(np.sum(yy == 1))
    return {"n": int(yy.size), "n_pos": n_pos, "n_neg": int(yy.size) - n_pos}


def _check_binary(y: NDArray[Any]) -> None:
    bad = np.setdiff1d(np.unique(y), [0, 1])
    if bad.size:
        raise ValueError(f"binary labels must be 0/1 (NaN = missing), found {bad.tolist()}")


def _not_estimable(y: NDArray[Any], **extra: Any) -> dict[str, Any] | None:
    classes = np.unique(y)
    if classes.size >= 2:
        return None
    what = "no labelled subjects" if classes.size == 0 else "only one class"
    return {"estimable": False, "reason": f"{what} (n={y.size})", **class_counts(y), **extra}


def rng_for(seed: int | Sequence[int]) -> np.random.Generator:
    """The seeded generator used everywhere (``seed`` may be a sequence, e.g. ``[seed, marker_index]``)."""
    return np.random.default_rng(seed)


def stratified_bootstrap_indices(y: ArrayLike, n_boot: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """Indices of ``n_boot`` stratified bootstrap replicates, shape ``(n_boot, n)``.

    Each class is resampled with replacement separately, so every replicate has exactly the observed class
    counts. Columns are grouped by class (in sorted class order), so the label vector of every replicate is the
    same: ``y[idx[0]]`` (see :func:`bootstrap_labels`).
    """
    yy = np.asarray(y).reshape(-1)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    blocks = []
    for c in np.unique(yy):
        members = np.flatnonzero(yy == c)
        blocks.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    if not blocks:
        return np.zeros((n_boot, 0), dtype=np.intp)
    return np.concatenate(blocks, axis=1)


def _rank_auc(pos_mask: NDArray[np.bool_], scores: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise AUC via the Mann-Whitney identity (average ranks for ties; equals ``roc_auc_score``).

    ``scores`` has shape ``(n_rows, n)``; ``pos_mask`` (length ``n``) marks the positive columns, the same for
    every row, which holds for :func:`stratified_bootstrap_indices` replicates.
    """
    n_pos = int(pos_mask.sum())
    n_neg = pos_mask.size - n_pos
    ranks = rankdata(scores, axis=1)
    return (ranks[:, pos_mask].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _percentile_ci(values: NDArray[np.float64], level: float) -> tuple[float, float]:
    alpha = 1.0 - level
    lo, hi = np.nanquantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


# --------------------------------------------------------------------------------------------------------------
# classification: AUC, thresholds, calibration
# --------------------------------------------------------------------------------------------------------------


def auc(y: ArrayLike, p: ArrayLike) -> float:
    """ROC AUC (:func:`sklearn.metrics.roc_auc_score`) after dropping missing labels; NaN if one class."""
    from sklearn.metrics import roc_auc_score
    yy, pp = labelled(y, p)
    if np.unique(yy).size < 2:
        return float("nan")
    return float(roc_auc_score(yy, pp))


def auc_with_ci(
    y: ArrayLike,
    p: ArrayLike,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int | Sequence[int] = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """AUC with a stratified percentile-bootstrap CI.

    Returns ``estimable``, ``auc``, ``ci_low``, ``ci_high``, ``level``, ``n``, ``n_pos``, ``n_neg``, ``n_boot``;
    or ``{"estimable": False, "reason": "only one class (n=...)", n, n_pos, n_neg}``.
    """
    from sklearn.metrics import roc_auc_score
    _check_level(level)
    yy, pp = labelled(y, p)
    _check_binary(yy)
    bad = _not_estimable(yy)
    if bad:
        return bad
    idx = stratified_bootstrap_indices(yy, n_boot, rng_for(seed))
    boot = _rank_auc(yy[idx[0]] == 1, pp[idx])
    lo, hi = _percentile_ci(boot, level)
    return {
        "estimable": True,
        "auc": float(roc_auc_score(yy, pp)),
        "ci_low": lo,
        "ci_high": hi,
        "level": level,
        "n_boot": int(n_boot),
        **class_counts(yy),
    }


def roc_points(y: ArrayLike, p: ArrayLike) -> dict[str, list[float]]:
    """ROC curve points (:func:`sklearn.metrics.roc_curve`): ``fpr`` and ``tpr`` lists (labels present only)."""
    from sklearn.metrics import roc_curve
    yy, pp = labelled(y, p)
    fpr, tpr, _ = roc_curve(yy, pp)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _tpr_on_grid(
    pos_scores: NDArray[np.float64], neg_scores: NDArray[np.float64], grid: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Row-wise TPR of the full ROC step function at each FPR of ``grid``: the highest TPR reached with
    FPR <= the grid value. ``pos_scores`` ``(rows, n_pos)``, ``neg_scores`` ``(rows, n_neg)``; returns
    ``(rows, grid.size)``.

    At most ``k = floor(f * n_neg)`` negatives may score at or above the threshold, so the best threshold lies just
    above the ``(k+1)``-th highest negative score and the TPR is the fraction of positives strictly above it.
    """
    n_neg = neg_scores.shape[1]
    neg_desc = -np.sort(-neg_scores, axis=1)
    out = np.ones((pos_scores.shape[0], grid.size), dtype=np.float64)
    ks = np.floor(grid * n_neg + 1e-9).astype(int)
    for j, k in enumerate(ks):
        if k < n_neg:
            out[:, j] = np.mean(pos_scores > neg_desc[:, k : k + 1], axis=1)
    return out


def roc_band(
    y: ArrayLike,
    p: ArrayLike,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int | Sequence[int] = 0,
    level: float = DEFAULT_LEVEL,
    fpr_grid: ArrayLike = FPR_GRID,
) -> dict[str, Any]:
    """ROC curve with a pointwise bootstrap band: on a fixed FPR grid, the median and percentile interval of the
    TPR over stratified bootstrap replicates (same replicates as :func:`auc_with_ci` for the same seed).

    Returns ``fpr``, ``tpr`` (the observed curve), ``grid``, ``tpr_median``, ``tpr_low``, ``tpr_high``.
    """
    from sklearn.metrics import roc_curve
    _check_level(level)
    yy, pp = labelled(y, p)
    _check_binary(yy)
    bad = _not_estimable(yy)
    if bad:
        return bad
    grid = np.asarray(fpr_grid, dtype=np.float64)
    idx = stratified_bootstrap_indices(yy, n_boot, rng_for(seed))
    pos = yy[idx[0]] == 1
    curves = _tpr_on_grid(pp[idx][:, pos], pp[idx][:, ~pos], grid)
    alpha = 1.0 - level
    low, med, high = np.quantile(curves, [alpha / 2.0, 0.5, 1.0 - alpha / 2.0], axis=0)
    fpr, tpr, _ = roc_curve(yy, pp)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "grid": grid.tolist(),
        "tpr_median": med.tolist(),
        "tpr_low": low.tolist(),
        "tpr_high": high.tolist(),
        "level": level,
    }


def confusion_counts(y: ArrayLike, p: ArrayLike, thresholds: ArrayLike) -> dict[str, NDArray[np.int64]]:
    """Confusion counts at each threshold (predicted positive when ``p >= threshold``), missing labels dropped.

    This is what a *training* site computes on its validation split; the sites' counts are summed and passed to
    :func:`choose_threshold_from_counts`. Returns ``tp``, ``fp``, ``tn``, ``fn`` arrays aligned with
    ``thresholds``.
    """
    yy, pp = labelled(y, p)
    _check_binary(yy)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    pos = np.sort(pp[yy == 1])
    neg = np.sort(pp[yy == 0])
    tp = pos.size - np.searchsorted(pos, t, side="left")
    fp = neg.size - np.searchsorted(neg, t, side="left")
    return {
        "tp": tp.astype(np.int64),
        "fp": fp.astype(np.int64),
        "tn": (neg.size - fp).astype(np.int64),
        "fn": (pos.size - tp).astype(np.int64),
    }


def choose_threshold_from_counts(
    thresholds: ArrayLike, tp: ArrayLike, fp: ArrayLike, tn: ArrayLike, fn: ArrayLike
) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1, from summed confusion counts.

    Takes *only* aggregated counts of the training sites' validation data (one entry per candidate threshold),
    never predictions or labels of the external site. Ties (equal J, e.g. a plateau between two observed scores)
    go to the threshold closest to 0.5, then to the smaller one (the rule of
    :func:`fedglioma.federated.select.youden`).

    Raises :class:`~fedglioma.errors.ConfigError` when the counts are inconsistent or hold no positives or no
    negatives (J is then undefined).
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    c = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in {"tp": tp, "fp": fp, "tn": tn, "fn": fn}.items()}
    if t.size == 0:
        raise ConfigError("no candidate thresholds")
    if not np.all(np.isfinite(t)):
        raise ConfigError("candidate thresholds must be finite")
    for k, v in c.items():
        if v.shape != t.shape:
            raise ConfigError(f"{k} has {v.size} entries but there are {t.size} thresholds")
        if np.any(v < 0) or not np.all(np.isfinite(v)):
            raise ConfigError(f"{k} counts must be finite and non-negative")
    pos = c["tp"] + c["fn"]
    neg = c["fp"] + c["tn"]
    if np.ptp(pos) != 0 or np.ptp(neg) != 0:
        raise ConfigError("inconsistent counts: tp+fn and fp+tn must be the same at every threshold")
    if pos[0] == 0 or neg[0] == 0:
        raise ConfigError(f"cannot choose a threshold: {int(pos[0])} positives and {int(neg[0])} negatives")
    j = c["tp"] / pos + c["tn"] / neg - 1.0
    tied = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    best = min(tied, key=lambda i: (abs(t[i] - 0.5), t[i]))
    return float(t[best])


def threshold_grid(linear_step: float = 0.01, max_logit: float = 16.0, logit_step: float = 0.25) -> NDArray[np.float64]:
    """Candidate thresholds on which training sites report confusion counts (positive when ``p >= t``).

    The union of a linear grid ``0, linear_step, ..., 1`` (fine around 0.5) and ``sigmoid(l)`` for logits
    ``l = -max_logit, ..., max_logit`` in steps of ``logit_step`` (fine near 0 and 1, where a trained head's
    probabilities saturate: a 0.01 grid has only 0.99 and 1.0 above 0.99 and cannot separate 0.995 from 0.9999).
    With the defaults the largest threshold below 1 is ``1 - 1.1e-7``, the resolution of float32 probabilities.
    """
    linear = np.linspace(0.0, 1.0, round(1.0 / linear_step) + 1)
    logits = np.arange(-max_logit, max_logit + logit_step / 2, logit_step)
    return np.unique(np.round(np.concatenate([linear, 1.0 / (1.0 + np.exp(-logits))]), 12))


#: The one threshold grid of the package: site validation counts, model selection and tests use it.
THRESHOLD_GRID: tuple[float, ...] = tuple(float(t) for t in threshold_grid())


def threshold_metrics(
    y: ArrayLike,
    p: ArrayLike,
    threshold: float,
    *,
    n_boot: int = 0,
    seed: int | Sequence[int] = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Sensitivity, specificity and accuracy at a *given* threshold (predicted positive when ``p >= threshold``).

    The threshold comes from the training sites (:func:`choose_threshold_from_counts`). Returns the counts
    (``tp``, ``fp``, ``tn``, ``fn``, ``n``, ``n_pos``, ``n_neg``) and the three rates; with ``n_boot > 0`` also
    stratified percentile-bootstrap CIs (``sensitivity_ci_low`` ...). A rate whose denominator is zero is NaN.
    """
    _check_level(level)
    if threshold is None or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    yy, pp = labelled(y, p)
    _check_binary(yy)
    counts = {k: int(v[0]) for k, v in confusion_counts(yy, pp, [threshold]).items()}
    n_pos, n_neg = counts["tp"] + counts["fn"], counts["fp"] + counts["tn"]
    out: dict[str, Any] = {
        "threshold": float(threshold),
        **counts,
        **class_counts(yy),
        "sensitivity": counts["tp"] / n_pos if n_pos else float("nan"),
        "specificity": counts["tn"] / n_neg if n_neg else float("nan"),
        "accuracy": (counts["tp"] + counts["tn"]) / yy.size if yy.size else float("nan"),
    }
    if n_boot > 0 and yy.size:
        idx = stratified_bootstrap_indices(yy, n_boot, rng_for(seed))
        pos_cols = yy[idx[0]] == 1
        hit = pp[idx] >= threshold
        tp_b = hit[:, pos_cols].sum(axis=1)
        tn_b = (~hit[:, ~pos_cols]).sum(axis=1)
        rates = {
            "sensitivity": tp_b / n_pos if n_pos else None,
            "specificity": tn_b / n_neg if n_neg else None,
            "accuracy": (tp_b + tn_b) / yy.size,
        }
        for name, r in rates.items():
            lo, hi = _percentile_ci(r, level) if r is not None else (float("nan"), float("nan"))
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
        out["level"] = level
    return out


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Brier score (:func:`sklearn.metrics.brier_score_loss`) after dropping missing labels; NaN if none."""
    from sklearn.metrics import brier_score_loss
    yy, pp = labelled(y, p)
    if yy.size == 0:
        return float("nan")
    return float(brier_score_loss(yy, pp, pos_label=1))


def reliability(y: ArrayLike, p: ArrayLike, *, n_bins: int = 10) -> dict[str, Any]:
    """Reliability curve (:func:`sklearn.calibration.calibration_curve`, uniform bins) with the count per bin.

    Returns ``prob_pred`` (mean predicted probability), ``prob_true`` (observed fraction of positives) and
    ``count`` for each non-empty bin, plus ``n_bins`` and ``bin_edges``.
    """
    from sklearn.calibration import calibration_curve
    yy, pp = labelled(y, p)
    _check_binary(yy)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if yy.size == 0:
        return {"prob_pred": [], "prob_true": [], "count": [], "n_bins": n_bins, "bin_edges": edges.tolist()}
    prob_true, prob_pred = calibration_curve(yy, pp, n_bins=n_bins, strategy="uniform", pos_label=1)
    counts = np.bincount(np.searchsorted(edges[1:-1], pp), minlength=n_bins)  # sklearn's own binning
    counts = counts[counts > 0]
    if counts.size != prob_true.size:  # pragma: no cover - guards against a change of sklearn's binning
        raise RuntimeError("reliability bins do not match sklearn.calibration.calibration_curve")
    return {
        "prob_pred": prob_pred.tolist(),
        "prob_true": prob_true.tolist(),
        "count": counts.tolist(),
        "n_bins": n_bins,
        "bin_edges": edges.tolist(),
    }


# --------------------------------------------------------------------------------------------------------------
# grade
# --------------------------------------------------------------------------------------------------------------


def grade_binary(grade: ArrayLike) -> NDArray[np.float64]:
    """Grade 4 vs 2-3 as 1/0 (NaN stays missing)."""
    g = np.asarray(grade, dtype=np.float64)
    return np.where(np.isfinite(g), (g == 4).astype(np.float64), np.nan)


def grade_ovr_auc(
    grade: ArrayLike,
    probs: ArrayLike,
    *,
    classes: Sequence[int] = (2, 3, 4),
    n_boot: int = DEFAULT_N_BOOT,
    seed: int | Sequence[int] = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Macro one-vs-rest AUC over grades 2/3/4 (``roc_auc_score(multi_class="ovr", average="macro")``) with a
    stratified bootstrap CI. ``probs`` has one column per class; rows are renormalised to sum to 1.

    Estimable only when every class is present; otherwise ``{"estimable": False, "reason": ...}``.
    """
    from sklearn.metrics import roc_auc_score
    _check_level(level)
    g, pr = labelled(grade, probs)
    pr = np.asarray(pr, dtype=np.float64).reshape(g.size, -1)
    cls = np.asarray(classes, dtype=np.float64)
    if pr.shape[1] != cls.size:
        raise ValueError(f"probs has {pr.shape[1]} columns for {cls.size} classes")
    bad = np.setdiff1d(np.unique(g), cls)
    if bad.size:
        raise ValueError(f"grades must be one of {list(classes)}, found {bad.tolist()}")
    per_class = {int(c): int(np.sum(g == c)) for c in cls}
    if any(v == 0 for v in per_class.values()):
        present = [c for c, v in per_class.items() if v]
        return {
            "estimable": False,
            "reason": f"not all grades present: {present} (n={g.size})",
            "n": int(g.size),
            "n_per_class": per_class,
        }
    sums = pr.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError("grade probabilities must not all be zero for a subject")
    pr = pr / sums
    point = float(roc_auc_score(g, pr, multi_class="ovr", average="macro", labels=cls))
    idx = stratified_bootstrap_indices(g, n_boot, rng_for(seed))
    gb = g[idx[0]]
    boot = np.mean([_rank_auc(gb == c, pr[idx, k]) for k, c in enumerate(cls)], axis=0)
    lo, hi = _percentile_ci(boot, level)
    return {
        "estimable": True,
        "auc": point,
        "ci_low": lo,
        "ci_high": hi,
        "level": level,
        "n_boot": int(n_boot),
        "n": int(g.size),
        "n_per_class": per_class,
    }


# --------------------------------------------------------------------------------------------------------------
# paired comparison
# --------------------------------------------------------------------------------------------------------------


def paired_bootstrap_auc(
    y: ArrayLike,
    p_a: ArrayLike,
    p_b: ArrayLike,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int | Sequence[int] = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Paired stratified bootstrap of ``AUC(a) - AUC(b)`` on the same subjects.

    Both models are scored on the same resampled subjects in every replicate. The two-sided p-value is
    ``min(1, 2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (n_boot + 1))`` over the replicate differences ``d*``:
    the smallest alpha at which the percentile CI of the difference excludes 0 (with the usual +1 correction so
    that p is never 0). Subjects missing the label or either prediction are left out.
    """
    from sklearn.metrics import roc_auc_score
    _check_level(level)
    yy, pa, pb = labelled(y, p_a, p_b)
    _check_binary(yy)
    bad = _not_estimable(yy)
    if bad:
        return bad
    idx = stratified_bootstrap_indices(yy, n_boot, rng_for(seed))
    pos = yy[idx[0]] == 1
    d = _rank_auc(pos, pa[idx]) - _rank_auc(pos, pb[idx])
    auc_a, auc_b = float(roc_auc_score(yy, pa)), float(roc_auc_score(yy, pb))
    lo, hi = _percentile_ci(d, level)
    p = min(1.0, 2.0 * min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1) / (n_boot + 1))
    return {
        "estimable": True,
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": auc_a - auc_b,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": float(p),
        "level": level,
        "n_boot": int(n_boot),
        **class_counts(yy),
    }
