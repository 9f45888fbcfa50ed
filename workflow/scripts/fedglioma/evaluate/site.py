"""One site's aggregated evaluation metrics, computed inside the site's scope from per-subject tables.

:func:`summarise_site` turns per-subject predictions, labels and segmentation rows into a JSON-able dict that
holds only aggregates (AUCs, counts, curves, distribution summaries), so it may leave the site.

Decision thresholds come from the training sites only (their validation confusion counts, summed by
:func:`fedglioma.federated.select.select_model`); the external site never takes part in choosing one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from fedglioma import metrics as M
from fedglioma.atomic import jsonable
from fedglioma.constants import GRADES, TASKS
from fedglioma.endpoints import POPULATION_LABEL, Endpoints, restrict
from fedglioma.errors import ConfigError, InputError

#: Prediction columns of a predictions TSV (probabilities in [0, 1]; grade columns one per WHO grade).
PREDICTION_COLUMNS: tuple[str, ...] = ("p_idh", "p_codeletion", "p_mgmt", "p_grade2", "p_grade3", "p_grade4")
#: Segmentation row columns (per subject).
SEG_COLUMNS: tuple[str, ...] = ("dice", "hd95", "volume_diff_ml")
#: The same metrics on the network grid (secondary): column of each segmentation row -> summary key.
GRID_COLUMNS: dict[str, str] = {"dice_grid": "dice", "hd95_grid": "hd95_mm", "volume_diff_ml_grid": "volume_diff_ml"}
#: The four markers reported: three binary ones and grade (4 vs 2-3 as the primary grade endpoint).
MARKERS: tuple[str, ...] = TASKS
#: Column of ``predictions`` that scores each marker's positive class.
SCORE_COLUMN: dict[str, str] = {"idh": "p_idh", "codeletion": "p_codeletion", "mgmt": "p_mgmt", "grade": "p_grade4"}
#: Other names of markers in threshold files (training calls grade 4 vs 2-3 ``grade4``).
THRESHOLD_ALIASES: dict[str, str] = {"grade4": "grade"}
#: Human-readable endpoint of each marker.
MARKER_LABEL: dict[str, str] = {
    "idh": "IDH mutant vs wild-type",
    "codeletion": "1p/19q codeleted vs intact",
    "mgmt": "MGMT methylated vs unmethylated",
    "grade": "grade 4 vs 2-3",
}
#: Short display name of each marker.
MARKER_NAME: dict[str, str] = {"idh": "IDH", "codeletion": "1p/19q", "mgmt": "MGMT", "grade": "Grade 4 vs 2-3"}


def _require(df: pd.DataFrame, columns: Iterable[str], what: str, site: str | None) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(
            f"{what} lacks columns {missing} (has {list(df.columns)})",
            site=site,
            fix=f"write the {what} with the documented columns",
        )
    dup = df["subject"].astype(str)[df["subject"].astype(str).duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{what} lists subjects more than once: {dup[:5]}", site=site)


def _numeric(df: pd.DataFrame, col: str, what: str, site: str | None) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    junk = df[col].notna() & values.isna() & (df[col].astype(str).str.strip() != "")
    if junk.any():
        raise InputError(
            f"{what} column {col} has non-numeric values {df.loc[junk, col].unique()[:5].tolist()}", site=site
        )
    return values.astype(np.float64)


def merge_site_table(
    predictions: pd.DataFrame, labels: pd.DataFrame, *, site: str | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Join predictions and labels on ``subject`` (every predicted subject kept; a subject without a labels row
    has all labels missing) and check values. Returns the table and subject counts
    (``n_predicted``, ``n_labelled_without_prediction``)."""
    _require(predictions, ("subject", *PREDICTION_COLUMNS), "predictions table", site)
    _require(labels, ("subject", *TASKS), "labels table", site)
    pred = predictions.assign(subject=predictions["subject"].astype(str))
    lab = labels.assign(subject=labels["subject"].astype(str))
    for c in PREDICTION_COLUMNS:
        pred[c] = _numeric(pred, c, "predictions table", site)
        v = pred[c].dropna()
        if ((v < 0) | (v > 1)).any():
            raise InputError(
                f"predictions column {c} has values outside [0, 1]", site=site, fix="write probabilities, not logits"
            )
    for c in TASKS:
        lab[c] = _numeric(lab, c, "labels table", site)
        allowed = GRADES if c == "grade" else (0, 1)
        bad = lab[c].dropna()[~lab[c].dropna().isin(allowed)]
        if not bad.empty:
            raise InputError(
                f"labels column {c} has values {sorted(bad.unique().tolist())}; allowed {allowed}", site=site
            )
    table = pred[["subject", *PREDICTION_COLUMNS]].merge(lab[["subject", *TASKS]], on="subject", how="left")
    counts = {
        "n_predicted": int(len(pred)),
        "n_labelled_without_prediction": int((~lab["subject"].isin(pred["subject"])).sum()),
    }
    return table, counts


def marker_targets(
    table: pd.DataFrame, marker: str, endpoints: Endpoints | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """0/1 target (NaN = missing or outside the endpoint's population) and score of a marker.

    Grade becomes grade 4 vs 2-3 scored by ``p_grade4``; 1p/19q counts only in the population that
    ``endpoints`` defines (:func:`fedglioma.endpoints.restrict`, the rule the training loss uses).
    """
    y = table[marker].to_numpy(dtype=np.float64)
    if marker == "grade":
        y = M.grade_binary(y)
    keep = restrict(marker, np.isfinite(y), table["idh"].to_numpy(dtype=np.float64), endpoints or Endpoints())
    y = np.where(keep, y, np.nan)
    return y, table[SCORE_COLUMN[marker]].to_numpy(dtype=np.float64)


def summarise_marker(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | None,
    *,
    n_boot: int,
    seed: int | list[int],
    n_bins: int = 10,
    level: float = M.DEFAULT_LEVEL,
    threshold_reason: str | None = None,
) -> dict[str, Any]:
    """All aggregated metrics of one binary marker (missing labels and missing predictions left out).

    ``threshold_reason`` says why ``threshold`` is ``None`` (e.g. the training sites' validation lacked a class).
    """
    n_missing_label = int(np.sum(~np.isfinite(y)))
    n_missing_pred = int(np.sum(np.isfinite(y) & ~np.isfinite(p)))
    missing = {"n_missing_label": n_missing_label, "n_missing_prediction": n_missing_pred}
    res = M.auc_with_ci(y, p, n_boot=n_boot, seed=seed, level=level)
    if not res["estimable"]:
        return {**res, **missing}
    out: dict[str, Any] = {
        "estimable": True,
        "n": res["n"],
        "n_pos": res["n_pos"],
        "n_neg": res["n_neg"],
        **missing,
        "auc": res["auc"],
        "auc_ci_low": res["ci_low"],
        "auc_ci_high": res["ci_high"],
        "level": level,
        "n_boot": n_boot,
        "brier": M.brier(y, p),
        "reliability": M.reliability(y, p, n_bins=n_bins),
        "roc": {k: v for k, v in M.roc_band(y, p, n_boot=n_boot, seed=seed, level=level).items() if k != "level"},
    }
    if threshold is None:
        out["threshold"] = None
        out["threshold_reason"] = threshold_reason or "no threshold given (chosen on the training sites' validation data)"
    else:
        tm = M.threshold_metrics(y, p, float(threshold), n_boot=n_boot, seed=seed, level=level)
        out.update({k: v for k, v in tm.items() if k not in ("n", "n_pos", "n_neg", "level")})
    return out


def summarise_segmentation(seg_rows: pd.DataFrame | None, *, site: str | None = None) -> dict[str, Any]:
    """Distribution summaries of per-subject ``dice``, ``hd95`` (mm), ``volume_diff_ml`` and its absolute value.

    Rows without a value count in ``n_undefined``; if the table has a ``hd95_reason`` column the reasons are
    tallied (an empty mask's HD95 is the BraTS penalty, see
    :func:`fedglioma.metrics.segmentation_metrics`). With ``dice_grid``, ``hd95_grid`` and
    ``volume_diff_ml_grid`` columns (the same masks on the network grid) their summaries go in
    ``network_grid``.
    """
    if seg_rows is None or len(seg_rows) == 0:
        return {"estimable": False, "reason": "no segmentation rows (n=0)", "n": 0}
    _require(seg_rows, ("subject", *SEG_COLUMNS), "segmentation table", site)
    vals = {c: _numeric(seg_rows, c, "segmentation table", site).to_numpy() for c in SEG_COLUMNS}
    out: dict[str, Any] = {
        "estimable": True,
        "n": int(len(seg_rows)),
        "dice": M.summarise_values(vals["dice"]),
        "hd95_mm": M.summarise_values(vals["hd95"]),
        "volume_diff_ml": M.summarise_values(vals["volume_diff_ml"]),
        "abs_volume_diff_ml": M.summarise_values(np.abs(vals["volume_diff_ml"])),
    }
    if all(c in seg_rows.columns for c in GRID_COLUMNS):
        out["network_grid"] = {
            k: M.summarise_values(_numeric(seg_rows, c, "segmentation table", site).to_numpy())
            for c, k in GRID_COLUMNS.items()
        }
    if "hd95_reason" in seg_rows.columns:
        reasons = seg_rows["hd95_reason"].fillna("").astype(str)
        out["hd95_undefined_reasons"] = {str(k): int(v) for k, v in reasons[reasons != ""].value_counts().items()}
    return out


def normalise_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Marker -> threshold from either plain numbers or model selection's ``{"threshold": t, ...}`` entries;
    ``grade4`` (the name used by training) is read as ``grade``. Unknown markers raise ConfigError."""
    out: dict[str, float | None] = {}
    for key, value in (thresholds or {}).items():
        marker = THRESHOLD_ALIASES.get(key, key)
        if marker not in MARKERS:
            raise ConfigError(f"threshold for unknown marker {key!r}; expected some of {list(MARKERS)} (or grade4)")
        if isinstance(value, Mapping):
            value = value.get("threshold")
        if value is not None:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"threshold of {key} is not finite")
        out[marker] = value
    return out


def threshold_reasons(thresholds: Mapping[str, Any] | None) -> dict[str, str]:
    """Marker -> why it has no threshold, from model selection's entries (``{"threshold": None, "reason": ...}``)."""
    out: dict[str, str] = {}
    for key, value in (thresholds or {}).items():
        if isinstance(value, Mapping) and value.get("threshold") is None and value.get("reason"):
            out[THRESHOLD_ALIASES.get(key, key)] = str(value["reason"])
    return out


def summarise_site(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    seg_rows: pd.DataFrame | None,
    thresholds: Mapping[str, Any] | None,
    *,
    n_boot: int = M.DEFAULT_N_BOOT,
    seed: int = 0,
    n_bins: int = 10,
    level: float = M.DEFAULT_LEVEL,
    site: str | None = None,
    endpoints: Endpoints | None = None,
) -> dict[str, Any]:
    """Site-aggregated metrics as a JSON-able dict (non-finite numbers become ``null``).

    ``predictions``: ``subject`` + :data:`PREDICTION_COLUMNS`; ``labels``: ``subject, idh, codeletion, mgmt,
    grade`` (NaN = missing); ``seg_rows``: ``subject, dice, hd95, volume_diff_ml`` (may be ``None``);
    ``thresholds``: marker -> threshold chosen on the training sites (a missing marker gets no thresholded
    metrics; see :func:`normalise_thresholds` for the accepted forms). Each marker uses its own bootstrap stream
    ``[seed, marker index]``.

    ``endpoints`` defines each marker's population (:mod:`fedglioma.endpoints`; default 1p/19q within
    IDH-mutant); ``markers["codeletion"]["other_population"]`` holds the AUC with CI and n of the other
    population, a secondary number for the reader.

    Layout: ``{"site", "n_boot", "seed", "level", "endpoints", "subjects": {...}, "markers": {marker: {...}},
    "segmentation": {...}}``; ``markers["grade"]`` is grade 4 vs 2-3 and holds ``ovr_macro`` (grades 2/3/4).
    """
    endpoints = endpoints or Endpoints()
    reasons = threshold_reasons(thresholds)
    thresholds = normalise_thresholds(thresholds)
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    table, subject_counts = merge_site_table(predictions, labels, site=site)
    markers: dict[str, Any] = {}
    for i, marker in enumerate(MARKERS):
        y, p = marker_targets(table, marker, endpoints)
        res = summarise_marker(y, p, thresholds.get(marker), n_boot=n_boot, seed=[seed, i], n_bins=n_bins,
                               level=level, threshold_reason=reasons.get(marker))
        res["label"] = MARKER_LABEL[marker]
        if marker == "codeletion":
            res["population"] = endpoints.codeletion
            res["label"] += f" ({POPULATION_LABEL[endpoints.codeletion]})"
            other = endpoints.other()
            y_o, p_o = marker_targets(table, marker, other)
            res["other_population"] = {"population": other.codeletion, "label": POPULATION_LABEL[other.codeletion],
                                       **M.auc_with_ci(y_o, p_o, n_boot=n_boot, seed=[seed, i], level=level)}
        if marker == "grade":
            probs = table[["p_grade2", "p_grade3", "p_grade4"]].to_numpy(dtype=np.float64)
            res["ovr_macro"] = M.grade_ovr_auc(
                table["grade"].to_numpy(dtype=np.float64),
                probs,
                classes=GRADES,
                n_boot=n_boot,
                seed=[seed, len(MARKERS)],
                level=level,
            )
        markers[marker] = res
    summary = {
        "site": site,
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "endpoints": endpoints.model_dump(),
        "subjects": subject_counts,
        "markers": markers,
        "segmentation": summarise_segmentation(seg_rows, site=site),
    }
    return jsonable(summary)
