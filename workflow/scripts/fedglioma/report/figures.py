"""Report figures: training curves per site and federated round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedglioma.errors import InputError
from fedglioma.evaluate.figures import new_figure, save_png

#: Columns of the training-curve rows (NaN allowed in the metric columns).
TRAINING_COLUMNS: tuple[str, ...] = ("round", "site", "train_loss", "val_loss", "val_dice", "val_auc_mean")
_PANELS: tuple[tuple[str, str], ...] = (
    ("train_loss", "training loss"),
    ("val_loss", "validation loss"),
    ("val_dice", "validation Dice"),
    ("val_auc_mean", "validation AUC (mean of markers)"),
)


def training_curves(rows: pd.DataFrame, out_png: str | Path) -> Path:
    """Plot training loss, validation loss, validation Dice and mean validation AUC against the round, one line
    per site (2 x 2 panels). Rows with NaN in a metric are skipped for that metric only; a panel with no values
    says so. Returns the PNG path."""
    missing = [c for c in TRAINING_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(f"training-curve table lacks columns {missing}", fix=f"provide {list(TRAINING_COLUMNS)}")
    df = rows.copy()
    df["round"] = pd.to_numeric(df["round"], errors="coerce")
    df["site"] = df["site"].astype(str)
    for c, _ in _PANELS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    fig = new_figure(9.0, 6.4)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    sites = sorted(df["site"].unique())
    colours = {s: f"C{i % 10}" for i, s in enumerate(sites)}
    for ax, (col, label) in zip(axes, _PANELS, strict=True):
        any_line = False
        for site in sites:
            d = df[(df["site"] == site) & np.isfinite(df[col]) & np.isfinite(df["round"])].sort_values("round")
            if d.empty:
                continue
            any_line = True
            ax.plot(d["round"], d[col], "-o", ms=3.5, lw=1.4, color=colours[site], label=site)
        if not any_line:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#777777")
        if col in ("val_dice", "val_auc_mean"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(label, fontsize=10, loc="left")
        ax.grid(color="#e5e5e5", lw=0.6)
        ax.tick_params(labelsize=8)
    for ax in axes[2:]:
        ax.set_xlabel("federated round", fontsize=9)
    rounds = df["round"].dropna()
    if not rounds.empty and rounds.max() - rounds.min() <= 20:
        for ax in axes:
            ax.set_xticks(np.arange(int(rounds.min()), int(rounds.max()) + 1))
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles, labels, loc="outside right center", fontsize=8.5, title="site", title_fontsize=9, frameon=False
        )
    return save_png(fig, out_png)
