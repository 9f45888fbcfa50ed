"""Pick the final round and decision thresholds from site-aggregated validation results only.

Inputs are the validation JSONs written by :func:`fedglioma.train.validate` (one per site and round). No
patient-level value is read: each site reports metrics and confusion counts over a fixed threshold grid.

- Round score: for each metric (mean Dice, AUC of idh, codeletion, mgmt, grade 4 vs 2/3) the mean over sites
  weighted by the number of subjects behind it; the score is the mean of the metrics available in *every*
  round (so rounds are compared on the same metrics); with none, minus the n-weighted validation loss. The best
  score wins; ties go to the earliest round.
- Thresholds: for the chosen round the counts are summed over sites and the Youden-optimal threshold
  (max sensitivity + specificity - 1; on ties the one closest to 0.5) is chosen per task.
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
from fedglioma.evaluate.metrics import choose_threshold_from_counts

#: Metrics of the round score, and the count field that weights each across sites.
SCORE_METRICS: tuple[str, ...] = ("dice_mean", "auc.idh", "auc.codeletion", "auc.mgmt", "auc.grade4")


def _metric(metrics: dict[str, Any], key: str) -> tuple[float | None, int]:
    """``(value, n)`` of a score metric in a site's ``metrics`` block."""
    if key == "dice_mean":
        return metrics.get("dice_mean"), int(metrics.get("n_seg") or 0)
    task = key.split(".", 1)[1]
    return (metrics.get("auc") or {}).get(task), int((metrics.get("n_auc") or {}).get(task) or 0)


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

    The choice is :func:`fedglioma.evaluate.metrics.choose_threshold_from_counts` (the one Youden rule of the
    package: ties go to the threshold closest to 0.5). Returns ``{threshold, sensitivity, specificity, youden,
    n_pos, n_neg}``; when positives or negatives are missing J is undefined, so ``threshold`` is 0.5 and the rest
    ``None``.
    """
    tp, fp, tn, fn = (np.asarray(counts[k], dtype=np.int64) for k in ("tp", "fp", "tn", "fn"))
    n_pos, n_neg = int(tp[0] + fn[0]), int(fp[0] + tn[0])
    if n_pos == 0 or n_neg == 0:
        return {"threshold": 0.5, "sensitivity": None, "specificity": None, "youden": None,
                "n_pos": n_pos, "n_neg": n_neg}
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


def select_model(
    validation_paths: Sequence[str | Path], out: str | Path, *, model_template: str | None = None
) -> dict[str, Any]:
    """Choose the final round and thresholds; write ``out`` (final.json) and return its content.

    Args:
        validation_paths: validation JSONs of all sites and rounds.
        out: the JSON to write.
        model_template: optional path template with ``{round}`` (e.g.
            ``results/federated/round-{round}/global.safetensors``), recorded as ``model``.
    """
    results = [_read(Path(p)) for p in validation_paths]
    if not results:
        raise InputError("no validation results given")
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_round[r["round"]].append(r)

    per_round: dict[int, dict[str, Any]] = {}
    for rnd, rs in sorted(by_round.items()):
        pooled: dict[str, float | None] = {}
        for key in SCORE_METRICS:
            num = den = 0.0
            for r in rs:
                value, n = _metric(r["metrics"], key)
                if value is not None and n > 0:
                    num, den = num + value * n, den + n
            pooled[key] = num / den if den else None
        n_val = sum(int(r.get("n_val") or 0) for r in rs)
        losses = [(r["metrics"].get("loss"), int(r.get("n_val") or 0)) for r in rs]
        lw = sum(n for v, n in losses if v is not None)
        loss = sum(v * n for v, n in losses if v is not None) / lw if lw else None
        per_round[rnd] = {"sites": sorted(r.get("site") for r in rs), "n_val": n_val, "loss": loss, "metrics": pooled}

    common = [k for k in SCORE_METRICS if all(pr["metrics"][k] is not None for pr in per_round.values())]
    for pr in per_round.values():
        if common:
            pr["score"] = float(np.mean([pr["metrics"][k] for k in common]))
        else:
            pr["score"] = -pr["loss"] if pr["loss"] is not None else None
    scored = [(pr["score"], rnd) for rnd, pr in per_round.items() if pr["score"] is not None]
    best = max(scored, key=lambda sr: (sr[0], -sr[1]))[1] if scored else max(per_round)

    grid: list[float] | None = None
    summed: dict[str, dict[str, np.ndarray]] = {}
    for r in by_round[best]:
        th = r.get("thresholds") or {}
        if not th:
            continue
        if grid is None:
            grid = list(th["grid"])
        elif list(th["grid"]) != grid:
            raise InputError("sites used different threshold grids", file=str(r.get("site")))
        for task, c in th["tasks"].items():
            acc = summed.setdefault(task, {k: np.zeros(len(grid), dtype=np.int64) for k in ("tp", "fp", "tn", "fn")})
            for k in acc:
                acc[k] += np.asarray(c[k], dtype=np.int64)
    thresholds = {t: youden(c, grid) for t, c in summed.items()} if grid is not None else {}

    final: dict[str, Any] = {
        "round": best,
        "score": per_round[best]["score"],
        "score_metrics": common or ["-loss"],
        "thresholds": thresholds,
        "rounds": {str(k): v for k, v in per_round.items()},
    }
    if model_template is not None:
        final["model"] = model_template.format(round=best)
    write_json(out, final)
    return final
