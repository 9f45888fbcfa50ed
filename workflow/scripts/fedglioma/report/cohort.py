"""The report's cohort table: one row per site, formatted from the sites' aggregated cohort summaries.

The numbers come from :func:`fedglioma.io.clinical.cohort_summary` only (each site's ``summary.json``, written by
rule ``labels``); :func:`cohort_table` is the one place the table is formatted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from fedglioma.constants import GRADES
from fedglioma.errors import InputError


def cohort_table(
    summaries: Sequence[Mapping[str, Any]],
    qc_exclusions: pd.DataFrame | None = None,
    qc_flagged: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """The cohort table of the report: per site the subjects, each label's prevalence among known labels with the
    number missing, the grade counts, and QC (counts only, no subject IDs).

    ``summaries`` are :func:`~fedglioma.io.clinical.cohort_summary` dicts. A ``Role`` column is shown when any
    summary has a role. ``qc_exclusions`` (``site, subject, reason``) gives ``QC excluded`` and the count per
    reason; a site with exclusions but no summary (every subject excluded) gets a row with 0 subjects.
    ``qc_flagged`` (site -> subjects flagged by QC, excluded or not) adds a ``QC flagged`` column.
    """
    exclusions = _exclusion_counts(qc_exclusions)
    with_role = any(s.get("role") is not None for s in summaries)
    rows: list[dict[str, Any]] = []
    for s in summaries:
        try:
            site = str(s["site"])
            row: dict[str, Any] = {"Site": site, **({"Role": s.get("role")} if with_role else {})}
            row |= {
                "Subjects": int(s["n"]),
                "IDH mutant": _prevalence(s, "idh"),
                "1p/19q codeleted": _prevalence(s, "codeletion"),
                "MGMT methylated": _prevalence(s, "mgmt"),
                "Grade (n per grade)": _grade_counts(s),
            }
        except KeyError as exc:
            raise InputError(f"cohort summary of site {s.get('site', '(unnamed)')} lacks {exc.args[0]}") from exc
        rows.append(row | _qc_cells(site, exclusions, qc_flagged))
    summarised = {row["Site"] for row in rows}
    rows += [
        {"Site": site, "Subjects": 0} | _qc_cells(site, exclusions, qc_flagged)
        for site in exclusions
        if site not in summarised
    ]
    return pd.DataFrame(rows)


def _prevalence(summary: Mapping[str, Any], task: str) -> str:
    """``k/n (p%)`` among known labels (``–`` if none), then ``, m missing`` if any."""
    n, k, n_missing = (int(summary[f"{task}_{key}"]) for key in ("n", "positive", "missing"))
    text = f"{k}/{n} ({100.0 * k / n:.0f}%)" if n else "–"
    return text + (f", {n_missing} missing" if n_missing else "")


def _grade_counts(summary: Mapping[str, Any]) -> str:
    """``2: a · 3: b · 4: c`` (``–`` if no grade is known), then ``, m missing`` if any."""
    text = " · ".join(f"{g}: {int(summary[f'grade{g}'])}" for g in GRADES) if int(summary["grade_n"]) else "–"
    n_missing = int(summary["grade_missing"])
    return text + (f", {n_missing} missing" if n_missing else "")


def _qc_cells(site: str, exclusions: Mapping[str, tuple[int, str]], qc_flagged: Mapping[str, int] | None
              ) -> dict[str, Any]:
    n_excluded, reasons = exclusions.get(site, (0, ""))
    flagged = {} if qc_flagged is None else {"QC flagged": int(qc_flagged.get(site, 0))}
    return flagged | {"QC excluded": n_excluded, "Exclusion reasons": reasons}


def _exclusion_counts(qc_exclusions: pd.DataFrame | None) -> dict[str, tuple[int, str]]:
    """site -> (subjects excluded, ``reason (count)`` joined by ``; ``)."""
    if qc_exclusions is None or qc_exclusions.empty:
        return {}
    missing = [c for c in ("site", "reason") if c not in qc_exclusions.columns]
    if missing:
        raise InputError(f"QC exclusion table lacks columns {missing}")
    out = {}
    for site, g in qc_exclusions.assign(site=qc_exclusions["site"].astype(str)).groupby("site", sort=False):
        counts = g["reason"].fillna("unspecified").astype(str).value_counts()
        out[str(site)] = (len(g), "; ".join(f"{r} ({n})" for r, n in counts.items()))
    return out
