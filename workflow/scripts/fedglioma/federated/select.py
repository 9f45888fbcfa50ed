"""Pick the final round and decision thresholds from site-aggregated validation results only.

Inputs are the validation JSONs written by :func:`fedglioma.train.validate` (one per site and round). No
patient-level value is read: each site reports metrics and confusion counts over the one threshold grid
(:data:`fedglioma.metrics.THRESHOLD_GRID`). Every arm (federated, centralized, local-only) is selected
by this one rule, :func:`select_model`.

- Round score (:func:`round_score`): segmentation and classification weigh half each. Segmentation is the
  mean Dice over all validation subjects with a mask (site means weighted by their ``n_seg``); classification
  is the mean over markers (idh, codeletion, mgmt, grade 4 vs 2/3) of the AUC of the ROC curve of the
  confusion counts summed over sites (:func:`pooled_auc`: every validation subject of every site on one curve,
  not a mean of per-site AUCs on two or three subjects each). A marker enters only when the pooled validation
  holds at least :data:`MIN_CLASS_COUNT` subjects of each class; the split is fixed, so the same metrics enter
  every round. With none, minus the n-weighted validation loss. The best score wins; ties go to the earliest
  round.
- Thresholds: for the chosen round, per marker, the Youden-optimal threshold of the summed counts
  (max sensitivity + specificity - 1; on ties the one closest to 0.5). A marker whose pooled validation lacks a
  class gets no threshold (``None`` with the reason), never a silent 0.5.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedglioma.atomic import write_json
from fedglioma.errors import InputError
from fedglioma.metrics import choose_threshold_from_counts

#: Metrics of the round score: pooled mean Dice, and the pooled AUC of each marker (grade: 4 vs 2/3).
SCORE_METRICS: tuple[str, ...] = ("dice_mean", "auc.idh", "auc.codeletion", "auc.mgmt", "auc.grade4")
#: How :func:`round_score` combines them (recorded in final.json).
SCORE_RULE = "mean of the pooled Dice and the mean of the entering markers' pooled AUCs (half each)"
#: A marker's pooled AUC enters the round score only with at least this many validation subjects of each class.
MIN_CLASS_COUNT = 3


def pooled_auc(counts: dict[str, Sequence[int]]) -> float | None:
    """Area under the ROC curve traced by confusion counts over the threshold grid (trapezoids).

    Equals the AUC of the pooled scores when the grid separates every pair of distinct scores (ties within a
    grid cell count half, as tied scores do). ``None`` when a class is missing.
    """
    tp, fp, tn, fn = (np.asarray(counts[k], dtype=np.float64) for k in ("tp", "fp", "tn", "fn"))
    n_pos, n_neg = tp[0] + fn[0], fp[0] + tn[0]
    if n_pos == 0 or n_neg == 0:
        return None
    tpr = np.concatenate([[0.0], tp / n_pos, [1.0]])
    fpr = np.concatenate([[0.0], fp / n_neg, [1.0]])
    order = np.lexsort((tpr, fpr))
    x, y = fpr[order], tpr[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def round_score(metrics: dict[str, float]) -> float:
    """The round score from the pooled metrics that enter it: the two task families weigh half each.

    Segmentation (``dice_mean``) and classification (the mean of the entering markers' pooled AUCs) count
    equally, so that four noisy marker AUCs on a handful of validation subjects do not outvote the Dice of
    every validation mask. With one family only, its value.

    >>> round_score({"dice_mean": 0.8, "auc.idh": 0.4, "auc.mgmt": 0.6})
    0.65
    """
    aucs = [v for k, v in metrics.items() if k != "dice_mean"]
    families = [metrics["dice_mean"]] if "dice_mean" in metrics else []
    if aucs:
        families.append(float(np.mean(aucs)))
    return float(np.mean(families))


def _read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"validation result unreadable ({exc})", file=path) from exc
    if not isinstance(d, dict) or not isinstance(d.get("round"), int) or "metrics" not in d:
        raise InputError("not a validation result (needs round, site, metrics)", file=path)
    return d


def youden(counts: dict[str, Sequence[int]], grid: Sequence[float]) -> dict[str, Any]:
    """Youden-optimal threshold from summed confusion counts over ``grid``.

    The choice is :func:`fedglioma.metrics.choose_threshold_from_counts` (the one Youden rule of the
    package: ties go to the threshold closest to 0.5). Returns ``{threshold, sensitivity, specificity, youden,
    n_pos, n_neg}``; when positives or negatives are missing J is undefined: ``threshold`` and the rates are
    ``None`` and ``reason`` says why.
    """
    tp, fp, tn, fn = (np.asarray(counts[k], dtype=np.int64) for k in ("tp", "fp", "tn", "fn"))
    n_pos, n_neg = int(tp[0] + fn[0]), int(fp[0] + tn[0])
    if n_pos == 0 or n_neg == 0:
        return {"threshold": None, "sensitivity": None, "specificity": None, "youden": None,
                "n_pos": n_pos, "n_neg": n_neg,
                "reason": f"the training sites' validation holds {n_pos} positive and {n_neg} negative subjects: "
                          "no threshold can be chosen (no thresholded metrics are reported)"}
    threshold = choose_threshold_from_counts(grid, tp, fp, tn, fn)
    i = int(np.flatnonzero(np.asarray(grid, dtype=np.float64) == threshold)[0])
    sens, spec = tp[i] / n_pos, tn[i] / n_neg
    return {
        "threshold": threshold,
        "sensitivity": float(sens),
        "specificity": float(spec),
        "youden": float(sens + spec - 1.0),
        "n_pos": n_pos,
        "n_neg": n_neg,
    }


def _common_grid(results: Sequence[dict[str, Any]]) -> list[float] | None:
    """The threshold grid every validation result used (``None`` when none carries counts)."""
    grid: list[float] | None = None
    for r in results:
        th = r.get("thresholds") or {}
        if not th:
            continue
        if grid is None:
            grid = list(th["grid"])
        elif list(th["grid"]) != grid:
            raise InputError("sites used different threshold grids", file=str(r.get("site")),
                             fix="rerun validation with one fedglioma version")
    return grid


def _summed_counts(results: Sequence[dict[str, Any]], grid: list[float] | None) -> dict[str, dict[str, np.ndarray]]:
    """Per task, the confusion counts over ``grid`` summed over the given sites' validation results."""
    summed: dict[str, dict[str, np.ndarray]] = {}
    if grid is None:
        return summed
    for r in results:
        for task, c in ((r.get("thresholds") or {}).get("tasks") or {}).items():
            acc = summed.setdefault(task, {k: np.zeros(len(grid), dtype=np.int64) for k in ("tp", "fp", "tn", "fn")})
            for k in acc:
                acc[k] += np.asarray(c[k], dtype=np.int64)
    return summed


def select_model(
    metrics: Sequence[str | Path], final: str | Path, *, model_template: str | None = None
) -> dict[str, Any]:
    """Choose the final round and thresholds from the sites' validation results only; write ``final``
    (final.json) and return its content. Rules ``select_model``, ``centralized_select``, ``local_only_select``;
    ``fedglioma federated select``.

    Args:
        metrics: validation JSONs of all sites and rounds.
        final: the JSON to write.
        model_template: optional path template with ``{round}`` (e.g.
            ``results/federated/round-{round}/global.safetensors``), recorded as ``model``.
    """
    results = [_read(Path(p)) for p in metrics]
    if not results:
        raise InputError("no validation results given")
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_round[r["round"]].append(r)

    endpoints = {json.dumps(r.get("endpoints"), sort_keys=True) for r in results}
    if len(endpoints) > 1:
        raise InputError(f"validation results use different endpoint definitions: {sorted(endpoints)}",
                         fix="rerun validation with one config (endpoints:)")
    grid = _common_grid(results)

    per_round: dict[int, dict[str, Any]] = {}
    summed_by_round: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for rnd, rs in sorted(by_round.items()):
        summed = summed_by_round[rnd] = _summed_counts(rs, grid)
        dice_num = dice_den = 0.0
        for r in rs:
            value, n = r["metrics"].get("dice_mean"), int(r["metrics"].get("n_seg") or 0)
            if value is not None and n > 0:
                dice_num, dice_den = dice_num + value * n, dice_den + n
        pooled: dict[str, float | None] = {"dice_mean": dice_num / dice_den if dice_den else None}
        n_class: dict[str, list[int]] = {}
        for key in SCORE_METRICS[1:]:
            c = summed.get(key.split(".", 1)[1])
            pooled[key] = pooled_auc(c) if c is not None else None
            if c is not None:
                n_class[key] = [int(c["tp"][0] + c["fn"][0]), int(c["fp"][0] + c["tn"][0])]
        n_val = sum(int(r.get("n_val") or 0) for r in rs)
        losses = [(r["metrics"].get("loss"), int(r.get("n_val") or 0)) for r in rs]
        lw = sum(n for v, n in losses if v is not None)
        loss = sum(v * n for v, n in losses if v is not None) / lw if lw else None
        per_round[rnd] = {"sites": sorted(r.get("site") for r in rs), "n_val": n_val, "loss": loss,
                          "metrics": pooled, "n_pos_neg": n_class, "n_seg": int(dice_den)}

    def usable(pr: dict[str, Any], key: str) -> bool:
        if pr["metrics"][key] is None:
            return False
        return key == "dice_mean" or min(pr["n_pos_neg"].get(key, [0, 0])) >= MIN_CLASS_COUNT

    common = [k for k in SCORE_METRICS if all(usable(pr, k) for pr in per_round.values())]
    for pr in per_round.values():
        if common:
            pr["score"] = round_score({k: pr["metrics"][k] for k in common})
        else:
            pr["score"] = -pr["loss"] if pr["loss"] is not None else None
    scored = [(pr["score"], rnd) for rnd, pr in per_round.items() if pr["score"] is not None]
    best = max(scored, key=lambda sr: (sr[0], -sr[1]))[1] if scored else max(per_round)
    thresholds = {t: youden(c, grid) for t, c in summed_by_round[best].items()} if grid is not None else {}

    doc: dict[str, Any] = {
        "round": best,
        "score": per_round[best]["score"],
        "score_metrics": common or ["-loss"],
        "score_rule": SCORE_RULE if common else "minus the n-weighted validation loss",
        "min_class_count": MIN_CLASS_COUNT,
        "endpoints": results[0].get("endpoints"),
        "thresholds": thresholds,
        "rounds": {str(k): v for k, v in per_round.items()},
    }
    if model_template is not None:
        doc["model"] = model_template.format(round=best)
    write_json(final, doc)
    return doc
