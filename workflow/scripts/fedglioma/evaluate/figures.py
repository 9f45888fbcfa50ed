"""Evaluation figures (matplotlib Agg, PNG, ~100 dpi, small files).

ROC and reliability figures are drawn from a site summary (aggregated curves only), so they may leave the site.
The Dice figure shows per-subject Dice values and the overlays show images: both are made inside the site's
scope.

No pyplot: figures are :class:`matplotlib.figure.Figure` objects with an Agg canvas, so nothing depends on a
display or on global pyplot state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from fedglioma.atomic import atomic_path
from fedglioma.constants import MODALITIES

#: Resolution of every PNG.
DPI = 100
#: Colours: observed curve, band, reference line, ground truth contour, predicted contour.
C_CURVE, C_BAND, C_REF, C_TRUTH, C_PRED = "#1f5fa8", "#9ec5ee", "#888888", "#2ca02c", "#e0245e"

_MARKER_NAME = {"idh": "IDH", "codeletion": "1p/19q", "mgmt": "MGMT", "grade": "Grade 4 vs 2-3"}


def new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas (inches)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out_png: str | Path) -> Path:
    """Write ``fig`` atomically as PNG; returns the path."""
    out = Path(out_png)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return out


def _fmt(x: Any, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _not_estimable(ax: Any, res: Mapping[str, Any]) -> None:
    ax.text(
        0.5,
        0.5,
        f"not estimable\n{res.get('reason', '')}",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=9,
        color="#555555",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _marker_axes(fig: Figure, n: int) -> list[Any]:
    cols = 2 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def roc_figure(markers: Mapping[str, Mapping[str, Any]], out_png: str | Path, *, title: str | None = None) -> Path:
    """ROC curve per marker with its bootstrap CI band, from ``summary["markers"]`` of
    :func:`fedglioma.evaluate.site.summarise_site`."""
    fig = new_figure(8.0, 7.6)
    for ax, (marker, res) in zip(_marker_axes(fig, len(markers)), markers.items(), strict=True):
        name = _MARKER_NAME.get(marker, marker)
        ax.set_title(name, fontsize=10, loc="left")
        if not res.get("estimable"):
            _not_estimable(ax, res)
            continue
        roc = res["roc"]
        lvl = int(round(100 * res.get("level", 0.95)))
        ax.fill_between(
            roc["grid"],
            roc["tpr_low"],
            roc["tpr_high"],
            color=C_BAND,
            alpha=0.6,
            lw=0,
            step="post",
            label=f"{lvl}% bootstrap band",
        )
        ax.plot(roc["fpr"], roc["tpr"], color=C_CURVE, lw=1.8, label="observed")
        ax.plot([0, 1], [0, 1], ls="--", color=C_REF, lw=0.8)
        if res.get("threshold") is not None and res.get("specificity") is not None:
            ax.plot(
                [1 - res["specificity"]],
                [res["sensitivity"]],
                "o",
                color="black",
                ms=5,
                label=f"threshold {res['threshold']:.3g}",
            )
        ax.set_title(
            f"{name}: AUC {_fmt(res['auc'])} ({lvl}% CI {_fmt(res['auc_ci_low'])}–{_fmt(res['auc_ci_high'])})",
            fontsize=10,
            loc="left",
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("1 − specificity", fontsize=9)
        ax.set_ylabel("sensitivity", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(
            loc="lower right",
            fontsize=7.5,
            title=f"n={res['n']} ({res['n_pos']} pos, {res['n_neg']} neg)",
            title_fontsize=8,
            framealpha=0.9,
        )
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, out_png)


def reliability_figure(
    markers: Mapping[str, Mapping[str, Any]], out_png: str | Path, *, title: str | None = None
) -> Path:
    """Reliability curve per marker (observed fraction positive vs mean predicted probability per bin; point
    area proportional to the bin count), with the Brier score."""
    fig = new_figure(8.0, 7.6)
    for ax, (marker, res) in zip(_marker_axes(fig, len(markers)), markers.items(), strict=True):
        ax.set_title(_MARKER_NAME.get(marker, marker), fontsize=10, loc="left")
        if not res.get("estimable"):
            _not_estimable(ax, res)
            continue
        rel = res["reliability"]
        counts = np.asarray(rel["count"], dtype=float)
        ax.plot([0, 1], [0, 1], ls="--", color=C_REF, lw=0.8, label="perfect calibration")
        ax.plot(rel["prob_pred"], rel["prob_true"], "-", color=C_CURVE, lw=1.2)
        if counts.size:
            ax.scatter(
                rel["prob_pred"],
                rel["prob_true"],
                s=15 + 120 * counts / counts.max(),
                color=C_CURVE,
                zorder=3,
                label="bins (area ∝ n)",
            )
        ax.text(
            0.97,
            0.05,
            f"Brier {_fmt(res.get('brier'), 3)}\nn={res['n']}",
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            fontsize=8.5,
            bbox={"fc": "white", "ec": "#cccccc", "lw": 0.5},
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("mean predicted probability", fontsize=9)
        ax.set_ylabel("observed fraction positive", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(loc="upper left", fontsize=7.5, frameon=False, markerscale=0.5)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, out_png)


def dice_figure(
    dice_values: ArrayLike | Mapping[str, ArrayLike], out_png: str | Path, *, title: str | None = None, seed: int = 0
) -> Path:
    """Dice distribution: box plot with the per-subject values as a jittered strip. ``dice_values`` is one array
    or a mapping group -> array (e.g. one per model); NaN values are left out and counted in the label."""
    groups = dict(dice_values) if isinstance(dice_values, Mapping) else {"": dice_values}
    rng = np.random.default_rng(seed)
    fig = new_figure(max(3.2, 1.6 + 1.3 * len(groups)), 4.2)
    ax = fig.subplots()
    labels = []
    for i, (name, vals) in enumerate(groups.items(), start=1):
        v = np.asarray(vals, dtype=float).reshape(-1)
        ok = v[np.isfinite(v)]
        n_bad = v.size - ok.size
        lab = f"{name}\n" if name else ""
        lab += f"n={ok.size}" + (f" (+{n_bad} undefined)" if n_bad else "")
        if ok.size:
            lab += f"\nmedian {np.median(ok):.3f}"
            ax.boxplot(
                ok,
                positions=[i],
                widths=0.5,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": C_BAND, "alpha": 0.5, "edgecolor": C_CURVE},
                medianprops={"color": C_CURVE, "lw": 2},
                whiskerprops={"color": C_CURVE},
                capprops={"color": C_CURVE},
            )
            ax.scatter(i + rng.uniform(-0.15, 0.15, ok.size), ok, s=14, color=C_CURVE, alpha=0.75, lw=0, zorder=3)
        labels.append(lab)
    ax.set_xticks(range(1, len(groups) + 1), labels, fontsize=8.5)
    ax.set_xlim(0.4, len(groups) + 0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice (whole tumour)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", color="#e5e5e5", lw=0.6)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=10)
    return save_png(fig, out_png)


def _best_slice(truth: np.ndarray, pred: np.ndarray) -> int:
    """Axial slice (last axis) with the largest reference area, else predicted area, else the middle."""
    for m in (truth, pred):
        area = m.reshape(-1, m.shape[-1]).sum(axis=0)
        if area.max() > 0:
            return int(np.argmax(area))
    return truth.shape[-1] // 2


def overlay_figure(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    titles: Sequence[str],
    out_png: str | Path,
    *,
    channels: Sequence[int] = (1, 3),
) -> Path:
    """Segmentation overlays (e.g. best/median/worst by Dice): one column per case, one row per channel.

    ``images[i]`` is ``(4, X, Y, Z)`` in :data:`~fedglioma.constants.MODALITIES` order (RAS-like: the last axis is
    axial); ``truths[i]``/``preds[i]`` are ``(X, Y, Z)`` masks. Each column shows the axial slice with the largest
    reference tumour area, the reference contour in green and the predicted contour in magenta.
    """
    n = len(images)
    if not (len(truths) == len(preds) == len(titles) == n) or n == 0:
        raise ValueError("overlay_figure needs the same, non-zero number of images, masks and titles")
    fig = new_figure(2.7 * n + 0.2, 2.7 * len(channels) + 0.5)
    axes = fig.subplots(len(channels), n, squeeze=False)
    for j, (img, t, p, title) in enumerate(zip(images, truths, preds, titles, strict=True)):
        img = np.asarray(img)
        t = np.asarray(t).astype(bool)
        p = np.asarray(p).astype(bool)
        if img.ndim != 4 or img.shape[1:] != t.shape or t.shape != p.shape:
            raise ValueError(f"case {title!r}: image {img.shape}, masks {t.shape} and {p.shape} do not match")
        z = _best_slice(t, p)
        for i, ch in enumerate(channels):
            ax = axes[i, j]
            sl = img[ch, :, :, z].T
            finite = sl[np.isfinite(sl)]
            lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            for mask, colour in ((t, C_TRUTH), (p, C_PRED)):
                if mask[:, :, z].any():
                    ax.contour(
                        mask[:, :, z].T.astype(float), levels=[0.5], colors=colour, linewidths=1.2, origin="lower"
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel(MODALITIES[ch] if ch < len(MODALITIES) else f"channel {ch}", fontsize=9)
    fig.suptitle("green: reference   magenta: predicted", fontsize=8.5, color="#444444")
    return save_png(fig, out_png)


def pick_best_median_worst(seg_rows: pd.DataFrame) -> dict[str, str]:
    """Subjects with the highest, median (lower middle) and lowest Dice (NaN left out); ``{}`` if none."""
    df = seg_rows[["subject", "dice"]].copy()
    df["dice"] = pd.to_numeric(df["dice"], errors="coerce")
    df = df.dropna().sort_values(["dice", "subject"], kind="stable").reset_index(drop=True)
    if df.empty:
        return {}
    return {
        "best": str(df["subject"].iloc[-1]),
        "median": str(df["subject"].iloc[(len(df) - 1) // 2]),
        "worst": str(df["subject"].iloc[0]),
    }


def write_site_figures(
    summary: Mapping[str, Any], seg_rows: pd.DataFrame | None, out_dir: str | Path, *, title: str | None = None
) -> dict[str, Path]:
    """Write ``roc.png``, ``reliability.png`` and (with segmentation rows) ``dice.png`` into ``out_dir``;
    returns name -> path (the names used by :func:`fedglioma.report.html.build_report`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = {
        "roc": roc_figure(summary["markers"], out / "roc.png", title=title),
        "reliability": reliability_figure(summary["markers"], out / "reliability.png", title=title),
    }
    if seg_rows is not None and len(seg_rows):
        figs["dice"] = dice_figure(seg_rows["dice"].to_numpy(dtype=float), out / "dice.png", title=title)
    return figs
