"""Tests of fedglioma.evaluate: metric functions, site summaries, comparison table, figures, CLI."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from fedglioma import metrics as M
from fedglioma.errors import ConfigError, InputError
from fedglioma.evaluate.compare import compare_models, comparison_table, format_comparison, paired_auc_tests
from fedglioma.evaluate.site import (
    normalise_thresholds,
    summarise_segmentation,
    summarise_site,
)

N_BOOT = 1000

# ----------------------------------------------------------------------------------------------- helpers


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


def _surface_bruteforce(mask: np.ndarray) -> np.ndarray:
    """Surface voxels by explicit 6-neighbour check (independent of scipy's erosion)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def _hd_bruteforce(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], q: float) -> float:
    pa = _surface_bruteforce(a) * np.asarray(spacing)
    pb = _surface_bruteforce(b) * np.asarray(spacing)
    d = cdist(pa, pb)
    return float(max(np.percentile(d.min(axis=1), q), np.percentile(d.min(axis=0), q)))


def _cohort(n: int = 80, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Predictions, labels and segmentation rows of a synthetic site with informative scores."""
    rng = np.random.default_rng(seed)
    subj = [f"S{i:03d}" for i in range(n)]
    idh = rng.integers(0, 2, n).astype(float)
    cod = np.where(idh == 1, rng.integers(0, 2, n), 0).astype(float)
    mgmt = rng.integers(0, 2, n).astype(float)
    grade = rng.choice([2.0, 3.0, 4.0], n)
    labels = pd.DataFrame({"subject": subj, "idh": idh, "codeletion": cod, "mgmt": mgmt, "grade": grade})

    def score(y: np.ndarray) -> np.ndarray:
        return np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1)

    g = rng.random((n, 3)) + np.stack([grade == 2, grade == 3, grade == 4], axis=1) * 0.8
    g /= g.sum(axis=1, keepdims=True)
    preds = pd.DataFrame(
        {
            "subject": subj,
            "p_idh": score(idh),
            "p_codeletion": score(cod),
            "p_mgmt": score(mgmt),
            "p_grade2": g[:, 0],
            "p_grade3": g[:, 1],
            "p_grade4": g[:, 2],
        }
    )
    seg = pd.DataFrame(
        {
            "subject": subj,
            "dice": np.clip(rng.normal(0.85, 0.05, n), 0, 1),
            "hd95": rng.gamma(2.0, 2.0, n),
            "volume_diff_ml": rng.normal(0, 3, n),
        }
    )
    return preds, labels, seg


# ------------------------------------------------------------------------------------------ segmentation


def test_dice_hand_computed() -> None:
    a = _cube((10, 10, 10), (0, 0, 0), 4)  # 64 voxels
    b = _cube((10, 10, 10), (2, 0, 0), 4)  # overlap 2*4*4 = 32
    assert M.dice(a, b) == pytest.approx(2 * 32 / 128)
    assert M.dice(a, a) == 1.0
    assert M.dice(a, np.zeros_like(a)) == 0.0
    assert M.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty: agreement


def test_hd95_plates_offset_anisotropic() -> None:
    """Two one-voxel-thick plates k voxels apart along an axis of spacing s: every surface distance is k*s."""
    spacing = (0.8, 1.0, 2.5)
    for k in (1, 3):
        a = np.zeros((12, 12, 12), dtype=bool)
        b = np.zeros_like(a)
        a[2:10, 2:10, 4] = True
        b[2:10, 2:10, 4 + k] = True
        assert M.hd95(a, b, spacing).value == pytest.approx(k * 2.5)
        assert M.hausdorff_distance(a, b, spacing, percentile=100).value == pytest.approx(k * 2.5)


def test_hd_single_voxels_euclidean_in_mm() -> None:
    a = np.zeros((8, 8, 8), dtype=bool)
    b = np.zeros_like(a)
    a[0, 0, 0] = True
    b[3, 4, 0] = True
    assert M.hd95(a, b, (1, 1, 1)).value == pytest.approx(5.0)
    assert M.hd95(a, b, (2, 1, 1)).value == pytest.approx(math.sqrt(36 + 16))


@pytest.mark.parametrize(("shift", "spacing"), [((0, 0, 2), (1.0, 1.0, 3.0)), ((1, 2, 0), (0.5, 1.2, 2.0))])
def test_hd95_cubes_match_bruteforce(shift: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    a = _cube((16, 16, 16), (3, 3, 3), 6)
    b = _cube((16, 16, 16), tuple(3 + s for s in shift), 6)
    for q in (95, 100):
        got = M.hausdorff_distance(a, b, spacing, percentile=q).value
        assert got == pytest.approx(_hd_bruteforce(a, b, spacing, q))
    # classical Hausdorff distance of a cube shifted along one axis: the shift in mm
    if shift == (0, 0, 2):
        assert M.hausdorff_distance(a, b, spacing, percentile=100).value == pytest.approx(2 * 3.0)


def test_hd95_mask_touching_the_border() -> None:
    a = _cube((6, 6, 6), (0, 0, 0), 6)  # fills the array: every border voxel is surface
    b = _cube((6, 6, 6), (0, 0, 0), 5)
    assert M.hd95(a, b, (1, 1, 1)).value == pytest.approx(_hd_bruteforce(a, b, (1, 1, 1), 95))


def test_hd95_empty_masks_are_nan_with_reason() -> None:
    a = _cube((8, 8, 8), (2, 2, 2), 3)
    z = np.zeros_like(a)
    for pred, truth, reason in (
        (z, z, "both masks empty"),
        (z, a, "predicted mask empty"),
        (a, z, "reference mask empty"),
    ):
        d = M.hd95(pred, truth, (1, 1, 1))
        assert math.isnan(d.value)
        assert d.reason == reason
    row = M.segmentation_metrics(z, a, (1, 1, 1), empty_penalty_mm=None)
    assert math.isnan(row["hd95"]) and row["hd95_reason"] == "predicted mask empty" and row["dice"] == 0.0


def test_empty_prediction_gets_the_brats_hd95_penalty_not_dropped() -> None:
    """A missed tumour counts as the worst case in the HD95 summary (it used to drop out as NaN)."""
    a = _cube((8, 8, 8), (2, 2, 2), 3)
    z = np.zeros_like(a)
    row = M.segmentation_metrics(z, a, (1, 1, 1))
    assert row["hd95"] == pytest.approx(373.13) and "predicted mask empty" in row["hd95_reason"]
    assert M.segmentation_metrics(z, z, (1, 1, 1))["hd95"] == 0.0
    rows = pd.DataFrame([{"subject": "a", **M.segmentation_metrics(a, a, (1, 1, 1))}, {"subject": "b", **row}])
    summary = summarise_segmentation(rows)
    assert summary["hd95_mm"]["n"] == 2 and summary["hd95_mm"]["n_undefined"] == 0
    assert summary["hd95_mm"]["max"] == pytest.approx(373.13)


def test_segmentation_input_checks() -> None:
    a = _cube((8, 8, 8), (2, 2, 2), 3)
    with pytest.raises(ValueError, match="shapes differ"):
        M.dice(a, a[:-1])
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, (1, 0, 1))


def test_volume_in_ml() -> None:
    a = _cube((10, 10, 10), (0, 0, 0), 6)  # 216 voxels of 3 mm^3
    assert M.volume_ml(a, (1, 1, 3)) == pytest.approx(0.648)
    b = _cube((10, 10, 10), (0, 0, 0), 4)  # 64 voxels
    assert M.volume_difference_ml(b, a, (1, 1, 3)) == pytest.approx((64 - 216) * 3 / 1000)


def test_summarise_values_counts_undefined() -> None:
    s = M.summarise_values([0.5, 0.7, np.nan, 0.9, 1.0])
    assert s["n"] == 4 and s["n_undefined"] == 1
    assert s["median"] == pytest.approx(0.8)
    assert s["iqr"] == pytest.approx(s["q3"] - s["q1"])
    empty = M.summarise_values([np.nan])
    assert empty["n"] == 0 and math.isnan(empty["median"])


# ---------------------------------------------------------------------------------------- classification


def test_auc_matches_sklearn_with_ties_and_missing() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120).astype(float)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(120), 0, 1), 1)  # many ties
    y_missing = y.copy()
    y_missing[:10] = np.nan
    assert M.auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert M.auc(y_missing, p) == pytest.approx(roc_auc_score(y[10:], p[10:]))
    # the rank formula used inside the bootstrap equals sklearn on every replicate
    idx = M.stratified_bootstrap_indices(y, 20, np.random.default_rng(0))
    fast = M._rank_auc(y[idx[0]] == 1, p[idx])
    slow = [roc_auc_score(y[row], p[row]) for row in idx]
    np.testing.assert_allclose(fast, slow)


def test_stratified_bootstrap_keeps_class_counts() -> None:
    y = np.array([0] * 30 + [1] * 7 + [0] * 5)
    idx = M.stratified_bootstrap_indices(y, 500, np.random.default_rng(3))
    assert idx.shape == (500, y.size)
    counts = (y[idx] == 1).sum(axis=1)
    assert np.all(counts == 7)
    assert np.all(y[idx] == y[idx[0]])  # same label layout in every replicate
    assert len(np.unique(idx[:, :35].ravel())) > 30  # resampling actually varies


def test_bootstrap_ci_contains_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 100).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random(100), 0, 1)
    r1 = M.auc_with_ci(y, p, n_boot=N_BOOT, seed=7)
    r2 = M.auc_with_ci(y, p, n_boot=N_BOOT, seed=7)
    r3 = M.auc_with_ci(y, p, n_boot=N_BOOT, seed=8)
    assert r1 == r2
    assert (r1["ci_low"], r1["ci_high"]) != (r3["ci_low"], r3["ci_high"])
    assert r1["ci_low"] <= r1["auc"] <= r1["ci_high"]
    assert r1["auc"] == pytest.approx(roc_auc_score(y, p))
    assert (r1["n"], r1["n_pos"], r1["n_neg"], r1["n_boot"]) == (100, int(y.sum()), 100 - int(y.sum()), N_BOOT)


def test_one_class_marker_is_not_estimable() -> None:
    y = np.array([1.0, 1.0, 1.0, np.nan])
    p = np.array([0.2, 0.6, 0.9, 0.5])
    r = M.auc_with_ci(y, p, n_boot=N_BOOT)
    assert r["estimable"] is False
    assert r["reason"] == "only one class (n=3)"
    assert (r["n"], r["n_pos"], r["n_neg"]) == (3, 3, 0)
    none = M.auc_with_ci([np.nan, np.nan], [0.1, 0.2], n_boot=N_BOOT)
    assert none["estimable"] is False and none["reason"] == "no labelled subjects (n=0)"
    assert M.paired_bootstrap_auc(y, p, p, n_boot=N_BOOT)["estimable"] is False


def test_threshold_metrics_at_given_threshold() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, np.nan])
    p = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5, 0.99])
    r = M.threshold_metrics(y, p, 0.5, n_boot=N_BOOT, seed=1)
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (2, 1, 2, 2)  # p >= 0.5 is positive
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["specificity"] == pytest.approx(2 / 4)
    assert r["accuracy"] == pytest.approx(4 / 7)
    assert r["n"] == 7
    assert r["sensitivity_ci_low"] <= r["sensitivity"] <= r["sensitivity_ci_high"]
    with pytest.raises(ValueError, match="threshold"):
        M.threshold_metrics(y, p, float("nan"))


def test_confusion_counts_match_bruteforce() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50).astype(float)
    p = np.round(rng.random(50), 2)
    grid = M.threshold_grid(0.05)
    c = M.confusion_counts(y, p, grid)
    for i, t in enumerate(grid):
        pred = p >= t
        assert c["tp"][i] == np.sum(pred & (y == 1)) and c["fp"][i] == np.sum(pred & (y == 0))
        assert c["tn"][i] == np.sum(~pred & (y == 0)) and c["fn"][i] == np.sum(~pred & (y == 1))


def test_choose_threshold_signature_takes_counts_only() -> None:
    """The threshold rule cannot see external data: its only inputs are a grid and summed confusion counts."""
    params = list(inspect.signature(M.choose_threshold_from_counts).parameters)
    assert params == ["thresholds", "tp", "fp", "tn", "fn"]


def test_youden_from_counts_matches_bruteforce_on_training_predictions() -> None:
    rng = np.random.default_rng(5)
    grid = np.asarray(M.THRESHOLD_GRID)
    # two training sites; the coordinator only ever sees their summed counts
    sites = []
    for _ in range(2):
        y = rng.integers(0, 2, 60).astype(float)
        sites.append((y, np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1)))
    counts = [M.confusion_counts(y, p, grid) for y, p in sites]
    summed = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "tn", "fn")}
    chosen = M.choose_threshold_from_counts(grid, summed["tp"], summed["fp"], summed["tn"], summed["fn"])
    # brute force on the pooled training predictions, same tie rule (closest to 0.5, then smaller)
    y_all = np.concatenate([s[0] for s in sites])
    p_all = np.concatenate([s[1] for s in sites])
    best_j, best_t = -np.inf, None
    for t in grid:
        pred = p_all >= t
        j = np.mean(pred[y_all == 1]) + np.mean(~pred[y_all == 0]) - 1
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and (abs(t - 0.5), t) < (abs(best_t - 0.5), best_t)):
            best_j, best_t = j, t
    assert chosen == pytest.approx(best_t)


def test_choose_threshold_tie_and_errors() -> None:
    t = [0.2, 0.4, 0.6, 0.8]
    # perfectly separable at every threshold: J = 1 everywhere -> closest to 0.5, then smaller
    assert M.choose_threshold_from_counts(t, [5] * 4, [0] * 4, [5] * 4, [0] * 4) == 0.4
    with pytest.raises(ConfigError, match="positives"):
        M.choose_threshold_from_counts(t, [0] * 4, [1] * 4, [1] * 4, [0] * 4)
    with pytest.raises(ConfigError, match="inconsistent"):
        M.choose_threshold_from_counts(t, [5, 4, 3, 2], [0] * 4, [5] * 4, [0] * 4)
    with pytest.raises(ConfigError, match="entries"):
        M.choose_threshold_from_counts(t, [5] * 3, [0] * 4, [5] * 4, [0] * 4)


def test_brier_and_reliability_match_sklearn() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 90).astype(float)
    p = rng.random(90)
    assert M.brier(y, p) == pytest.approx(brier_score_loss(y, p))
    r = M.reliability(y, p, n_bins=8)
    pt, pp = calibration_curve(y, p, n_bins=8)
    np.testing.assert_allclose(r["prob_true"], pt)
    np.testing.assert_allclose(r["prob_pred"], pp)
    assert sum(r["count"]) == 90


def test_grade_ovr_matches_sklearn_and_needs_all_classes() -> None:
    rng = np.random.default_rng(7)
    g = rng.choice([2.0, 3.0, 4.0], 90)
    probs = rng.random((90, 3))
    r = M.grade_ovr_auc(g, probs, n_boot=N_BOOT, seed=1)
    norm = probs / probs.sum(axis=1, keepdims=True)
    assert r["auc"] == pytest.approx(roc_auc_score(g, norm, multi_class="ovr", average="macro"))
    assert r["ci_low"] <= r["auc"] <= r["ci_high"]
    assert sum(r["n_per_class"].values()) == 90
    two = M.grade_ovr_auc(np.where(g == 3, 2.0, g), probs, n_boot=N_BOOT)
    assert two["estimable"] is False and "not all grades present: [2, 4]" in two["reason"]
    np.testing.assert_array_equal(M.grade_binary([2, 3, 4, np.nan]), [0, 0, 1, np.nan])


def test_roc_band_shapes_and_order() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 60).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1)
    r = M.roc_band(y, p, n_boot=N_BOOT, seed=2)
    low, med, high = (np.asarray(r[k]) for k in ("tpr_low", "tpr_median", "tpr_high"))
    assert low.shape == med.shape == high.shape == (len(r["grid"]),)
    assert np.all(low <= med + 1e-12) and np.all(med <= high + 1e-12)
    assert np.all(np.diff(med) >= -1e-12) and high[-1] == 1.0


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 80).astype(float)
    good = np.clip(0.5 * y + 0.5 * rng.random(80), 0, 1)
    noise = rng.random(80)
    same = M.paired_bootstrap_auc(y, good, good, n_boot=N_BOOT, seed=1)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    diff = M.paired_bootstrap_auc(y, good, noise, n_boot=N_BOOT, seed=1)
    assert diff == M.paired_bootstrap_auc(y, good, noise, n_boot=N_BOOT, seed=1)
    assert diff["p_value"] < 0.01 and diff["ci_low"] > 0
    assert diff["difference"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, noise))
    assert diff["p_value"] >= 1 / (N_BOOT + 1)


# ----------------------------------------------------------------------------------------------- site


@pytest.fixture(scope="module")
def site_data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    preds, labels, seg = _cohort(80)
    labels.loc[:9, "idh"] = np.nan  # 10 missing IDH labels
    labels.loc[:2, "grade"] = np.nan  # 3 missing grades
    labels["mgmt"] = 1.0  # MGMT: one class only
    seg.loc[0, "hd95"] = np.nan
    return preds, labels, seg


@pytest.fixture(scope="module")
def summary(site_data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> dict:
    preds, labels, seg = site_data
    return summarise_site(
        preds, labels, seg, {"idh": 0.5, "grade4": {"threshold": 0.4}}, n_boot=N_BOOT, seed=3, site="Ext"
    )


def test_summary_is_strict_json_with_n(summary: dict) -> None:
    json.dumps(summary, allow_nan=False)
    assert summary["site"] == "Ext" and summary["n_boot"] == N_BOOT
    idh = summary["markers"]["idh"]
    assert idh["estimable"] and idh["n"] == 70 and idh["n_missing_label"] == 10
    assert idh["n_pos"] + idh["n_neg"] == 70
    assert idh["threshold"] == 0.5 and "sensitivity" in idh and "auc_ci_low" in idh
    assert len(idh["roc"]["tpr_low"]) == len(idh["roc"]["grid"])
    grade = summary["markers"]["grade"]
    assert grade["n"] == 77 and grade["threshold"] == 0.4 and grade["ovr_macro"]["estimable"]
    assert summary["markers"]["codeletion"]["threshold"] is None  # no threshold given: none invented
    seg = summary["segmentation"]
    assert seg["dice"]["n"] == 80 and seg["hd95_mm"]["n"] == 79 and seg["hd95_mm"]["n_undefined"] == 1


def test_summary_one_class_marker(summary: dict) -> None:
    mgmt = summary["markers"]["mgmt"]
    assert mgmt["estimable"] is False and mgmt["reason"] == "only one class (n=80)"
    assert "auc" not in mgmt


def test_summary_missing_labels_match_manual(site_data: tuple[pd.DataFrame, ...], summary: dict) -> None:
    preds, labels, _ = site_data
    keep = labels["idh"].notna()
    expect = roc_auc_score(labels.loc[keep, "idh"], preds.loc[keep, "p_idh"])
    assert summary["markers"]["idh"]["auc"] == pytest.approx(expect)


def test_threshold_is_not_influenced_by_external_labels(site_data: tuple[pd.DataFrame, ...]) -> None:
    preds, labels, seg = site_data
    flipped = labels.assign(idh=1 - labels["idh"])
    a = summarise_site(preds, labels, None, {"idh": 0.5}, n_boot=N_BOOT, seed=0)
    b = summarise_site(preds, flipped, None, {"idh": 0.5}, n_boot=N_BOOT, seed=0)
    assert a["markers"]["idh"]["threshold"] == b["markers"]["idh"]["threshold"] == 0.5
    assert a["segmentation"]["estimable"] is False


def test_summary_input_errors(site_data: tuple[pd.DataFrame, ...]) -> None:
    preds, labels, seg = site_data
    with pytest.raises(InputError, match="lacks columns"):
        summarise_site(preds.drop(columns="p_mgmt"), labels, seg, {}, n_boot=10)
    with pytest.raises(InputError, match="outside"):
        summarise_site(preds.assign(p_idh=preds["p_idh"] + 2), labels, seg, {}, n_boot=10)
    with pytest.raises(InputError, match="grade"):
        summarise_site(preds, labels.assign(grade=5), seg, {}, n_boot=10)
    with pytest.raises(InputError, match="more than once"):
        summarise_site(pd.concat([preds, preds.iloc[:1]]), labels, seg, {}, n_boot=10)
    with pytest.raises(ConfigError, match="unknown marker"):
        normalise_thresholds({"tumour": 0.5})


# ---------------------------------------------------------------------------------------------- compare


def test_comparison_table_and_paired_tests(site_data: tuple[pd.DataFrame, ...], summary: dict) -> None:
    preds, labels, seg = site_data
    rng = np.random.default_rng(11)
    worse = preds.assign(p_idh=rng.random(len(preds)))
    s_worse = summarise_site(worse, labels, seg, {}, n_boot=N_BOOT, seed=3)
    tests = paired_auc_tests({"federated": preds, "centralized": worse}, labels, n_boot=N_BOOT, seed=1)
    assert tests["centralized"]["idh"]["n"] == 70
    assert tests["centralized"]["mgmt"]["estimable"] is False
    table = comparison_table({"centralized": s_worse, "federated": summary, "local-A": s_worse}, tests=tests)
    assert list(table.columns[:5]) == ["metric", "key", "better", "interval", "federated"]
    row = table.set_index("key").loc["auc:idh"]
    assert row["ratio_federated_centralized"] == pytest.approx(row["federated"] / row["centralized"])
    assert row["p_federated_vs_centralized"] == pytest.approx(tests["centralized"]["idh"]["p_value"])
    assert math.isnan(table.set_index("key").loc["dice_median", "p_federated_vs_centralized"])
    assert math.isnan(table.set_index("key").loc["auc:mgmt", "federated"])
    shown = format_comparison(table)
    assert "federated / centralized" in shown.columns and "p vs centralized" in shown.columns
    assert shown.loc[0, "Metric"] == "Dice median ↑"


def test_compare_models_writes_tsv(tmp_path, site_data: tuple[pd.DataFrame, ...], summary: dict) -> None:
    preds, labels, _ = site_data
    out = tmp_path / "cmp.tsv"
    compare_models(
        {"federated": summary, "centralized": summary},
        predictions={"federated": preds, "centralized": preds},
        labels=labels,
        n_boot=200,
        out_tsv=out,
    )
    back = pd.read_csv(out, sep="\t")
    assert back.set_index("key").loc["auc:idh", "p_federated_vs_centralized"] == 1.0


# ------------------------------------------------------------------------------------------ figures, CLI


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_site_figures_and_overlays(tmp_path, site_data: tuple[pd.DataFrame, ...], summary: dict) -> None:
    from fedglioma.evaluate.figures import overlay_figure, pick_best_median_worst, write_site_figures

    _, _, seg = site_data
    figs = write_site_figures(summary, seg, tmp_path)
    assert set(figs) == {"roc", "reliability", "dice"}
    for p in figs.values():
        assert _is_png(p) and p.stat().st_size < 300_000
    picks = pick_best_median_worst(seg)
    assert seg.set_index("subject").loc[picks["best"], "dice"] == seg["dice"].max()
    assert seg.set_index("subject").loc[picks["worst"], "dice"] == seg["dice"].min()
    img = np.random.default_rng(0).normal(size=(4, 20, 20, 12))
    t = _cube((20, 20, 12), (5, 5, 3), 6)
    out = overlay_figure(
        [img, img, img],
        [t, t, t],
        [t, np.roll(t, 2, 0), np.zeros_like(t)],
        ["best", "median", "worst"],
        tmp_path / "ov.png",
    )
    assert _is_png(out)
    with pytest.raises(ValueError):
        overlay_figure([img], [t[:-1]], [t], ["x"], tmp_path / "bad.png")


def test_cli_metrics_and_compare(tmp_path, site_data: tuple[pd.DataFrame, ...]) -> None:
    """`fedglioma evaluate metrics` (from tables) and `evaluate compare` (the compare rule's step), with --config."""
    from fedglioma.cli import main

    preds, labels, seg = site_data
    preds.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    labels.to_csv(tmp_path / "l.tsv", sep="\t", index=False, na_rep="")
    seg.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    (tmp_path / "final.json").write_text(
        json.dumps(
            {"round": 3, "thresholds": {"idh": {"threshold": 0.45, "youden": 0.3}, "grade4": {"threshold": 0.5}}}
        )
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sites: s.tsv\nevaluation:\n  n_bootstrap: 200\n")
    assert main(["evaluate", "metrics", "--predictions", str(tmp_path / "p.tsv"), "--labels", str(tmp_path / "l.tsv"),
                 "--seg", str(tmp_path / "s.tsv"), "--thresholds", str(tmp_path / "final.json"),
                 "--out", str(tmp_path / "m.json"), "--figures", str(tmp_path / "fig"), "--site", "Ext",
                 "--config", str(cfg)]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["markers"]["idh"]["threshold"] == 0.45 and m["markers"]["grade"]["threshold"] == 0.5
    assert m["markers"]["idh"]["n"] == 70
    assert _is_png(tmp_path / "fig" / "roc.png")
    assert main(["evaluate", "compare", "--config", str(cfg), "--set", "evaluation.n_bootstrap=100",
                 "--metrics", str(tmp_path / "m.json"), str(tmp_path / "m.json"),
                 "--predictions", str(tmp_path / "p.tsv"), str(tmp_path / "p.tsv"),
                 "--models", "federated", "centralized", "--labels", str(tmp_path / "l.tsv"),
                 "--table", str(tmp_path / "c.tsv"), "--site", "Ext"]) == 0
    assert "p_federated_vs_centralized" in pd.read_csv(tmp_path / "c.tsv", sep="\t").columns
