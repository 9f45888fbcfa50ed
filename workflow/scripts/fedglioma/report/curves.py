"""Training curves of the federation: per round and site, the local losses and the validation metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fedglioma.atomic import atomic_path
from fedglioma.faults import fault_point
from fedglioma.io.files import read_json

#: The privacy columns of the table: what a site spent after the round (empty without DP).
PRIVACY_COLUMNS = ("epsilon", "delta", "noise_multiplier", "accountant")


def _privacy(doc: Any) -> dict[str, Any]:
    doc = doc if isinstance(doc, dict) else {}
    return {k: doc.get(k, "" if k == "accountant" else np.nan) for k in PRIVACY_COLUMNS}


def _participation(rounds: Sequence[str]) -> dict[tuple[str, int], tuple[str, str]]:
    """``(site, round) -> (status, note)`` from the global models' sidecars: ``aggregated`` or ``clipped`` (with
    the scale) for the sites that took part, ``not_kept`` (with the score) for an accepted update Multi-Krum did
    not select, ``failed`` / ``refused`` / ``direction`` / ``norm`` with the reason for those left out."""
    out: dict[tuple[str, int], tuple[str, str]] = {}
    for side in (read_json(p, what="global model sidecar") for p in rounds):
        rnd = side["round"]
        krum = side.get("krum") or {}
        for s in side.get("sites", []):
            scale = s.get("clip_scale")
            out[(s["site"], rnd)] = ("clipped", f"x{scale:.3g}") if scale is not None else ("aggregated", "")
            if s["site"] in krum.get("not_kept", []):
                out[(s["site"], rnd)] = ("not_kept", f"multi-Krum score {krum['scores'][s['site']]:.3g}, kept "
                                         f"{len(krum['kept'])} of {len(krum['scores'])}")
        for e in side.get("excluded", []):
            out[(e["site"], rnd)] = (e["stage"], e["reason"])
    return out


def curves_table(sidecars: Sequence[str], metrics: Sequence[str], rounds: Sequence[str] = ()) -> pd.DataFrame:
    """One row per site and round from the update sidecars, validation JSONs and (``rounds``) the global models'
    sidecars (site-aggregated values only). ``status`` says whether the site's update went into the round's model
    (``aggregated``, ``clipped``) or why not (``not_kept`` by Multi-Krum, ``failed`` at the site, ``refused`` by a
    check, ``direction`` check, ``norm`` bound);
    ``note`` holds the reason or clip scale. The site's spent privacy after the round (:data:`PRIVACY_COLUMNS`,
    empty without DP); ``train_loss`` is empty under DP (not sent)."""
    rows = []
    val = {(d["site"], d["round"]): d for d in (read_json(p, what="validation result") for p in metrics)}
    taken = _participation(rounds)
    for side in (read_json(p, what="update sidecar") for p in sidecars):
        site, rnd = side["site"], side["round"]
        vdoc = val.get((site, rnd), {})
        v = vdoc.get("metrics") or {}
        aucs = [a for a in (v.get("auc") or {}).values() if a is not None]
        losses = side.get("train_losses") or (side.get("metrics") or {}).get("train_losses") or []
        default = ("failed", str(side.get("reason", ""))) if side.get("status") == "failed" else ("", "")
        status, note = taken.get((site, rnd), default)
        rows.append({
            "round": rnd,
            "site": site,
            "n_train": side.get("n_train"),
            "threads": side.get("threads"),  # CPU results are bit-identical only for the same thread count
            "train_loss": float(losses[-1]) if losses else np.nan,
            "val_loss": v.get("loss", np.nan),
            "val_dice": v.get("dice_mean", np.nan),
            "val_auc_mean": float(np.mean(aucs)) if aucs else np.nan,
            "status": status,
            "note": note,
            # a site that failed the round sent no update; its validation records what it had spent
            **_privacy(side.get("privacy") or vdoc.get("privacy")),
        })
    return pd.DataFrame(rows).sort_values(["site", "round"])


def training_curves(sidecars: Sequence[str], metrics: Sequence[str], table: str, png: str,
                    rounds: Sequence[str] = ()) -> None:
    """Rule ``training_curves`` / ``fedglioma report curves``: the curves as a TSV ``table`` and a figure ``png``.

    Args:
        sidecars: the sites' update sidecars (``update.json``) of every round.
        metrics: the sites' validation JSONs of every round.
        rounds: the global models' sidecars (``global.json``) of rounds 1..R: who took part in each round.
    """
    from pathlib import Path

    from fedglioma.report.figures import training_curves as plot

    t = curves_table(sidecars, metrics, rounds)
    with atomic_path(table) as tmp:
        t.to_csv(tmp, sep="\t", index=False, na_rep="")
    fault_point("training_curves/after-table")  # the table written, the figure not
    plot(t, Path(png))
