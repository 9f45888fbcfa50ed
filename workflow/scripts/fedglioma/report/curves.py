"""Training curves of the federation: per round and site, the local losses and the validation metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedglioma.atomic import atomic_path
from fedglioma.faults import fault_point
from fedglioma.io.files import read_json


def curves_table(sidecars: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per site and round from the update sidecars and validation JSONs (site-aggregated values only)."""
    rows = []
    val = {(d["site"], d["round"]): d for d in (read_json(p, what="validation result") for p in metrics)}
    for side in (read_json(p, what="update sidecar") for p in sidecars):
        site, rnd = side["site"], side["round"]
        v = val.get((site, rnd), {}).get("metrics", {})
        aucs = [a for a in (v.get("auc") or {}).values() if a is not None]
        losses = side.get("train_losses") or side.get("metrics", {}).get("train_losses") or []
        rows.append({
            "round": rnd,
            "site": site,
            "n_train": side.get("n_train"),
            "threads": side.get("threads"),  # CPU results are bit-identical only for the same thread count
            "train_loss": float(losses[-1]) if losses else np.nan,
            "val_loss": v.get("loss", np.nan),
            "val_dice": v.get("dice_mean", np.nan),
            "val_auc_mean": float(np.mean(aucs)) if aucs else np.nan,
        })
    return pd.DataFrame(rows).sort_values(["site", "round"])


def training_curves(sidecars: Sequence[str], metrics: Sequence[str], table: str, png: str) -> None:
    """Rule ``training_curves`` / ``fedglioma report curves``: the curves as a TSV ``table`` and a figure ``png``.

    Args:
        sidecars: the sites' update sidecars (``update.json``) of every round.
        metrics: the sites' validation JSONs of every round.
    """
    from pathlib import Path

    from fedglioma.report.figures import training_curves as plot

    t = curves_table(sidecars, metrics)
    with atomic_path(table) as tmp:
        t.to_csv(tmp, sep="\t", index=False, na_rep="")
    fault_point("training_curves/after-table")  # the table written, the figure not
    plot(t, Path(png))
