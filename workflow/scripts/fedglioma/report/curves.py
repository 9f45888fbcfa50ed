"""Training curves of the federation: per round and site, the local losses and the validation metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fedglioma.atomic import atomic_path
from fedglioma.io.files import read_json

#: The privacy columns of the table: what a site spent after the round (empty without DP).
PRIVACY_COLUMNS = ("epsilon", "delta", "noise_multiplier", "accountant")


def _privacy(doc: Any) -> dict[str, Any]:
    doc = doc if isinstance(doc, dict) else {}
    return {k: doc.get(k, "" if k == "accountant" else np.nan) for k in PRIVACY_COLUMNS}


def curves_table(sidecars: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per site and round from the update sidecars and validation JSONs (site-aggregated values only).

    Columns: round, site, n_train, train_loss (empty under DP: not sent), val_loss, val_dice, val_auc_mean, and the
    site's spent privacy after the round (:data:`PRIVACY_COLUMNS`, empty without DP).
    """
    rows = []
    val = {(d["site"], d["round"]): d for d in (read_json(p, what="validation result") for p in metrics)}
    for side in (read_json(p, what="update sidecar") for p in sidecars):
        site, rnd = side["site"], side["round"]
        v = val.get((site, rnd), {}).get("metrics", {})
        aucs = [a for a in (v.get("auc") or {}).values() if a is not None]
        losses = side.get("train_losses") or (side.get("metrics") or {}).get("train_losses") or []
        rows.append({
            "round": rnd,
            "site": site,
            "n_train": side.get("n_train"),
            "train_loss": float(losses[-1]) if losses else np.nan,
            "val_loss": v.get("loss", np.nan),
            "val_dice": v.get("dice_mean", np.nan),
            "val_auc_mean": float(np.mean(aucs)) if aucs else np.nan,
            **_privacy(side.get("privacy")),
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
    plot(t, Path(png))
