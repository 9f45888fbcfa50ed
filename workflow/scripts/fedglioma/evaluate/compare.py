"""Comparison of models on the external site: federated vs centralized vs local-only (one per training site).

:func:`comparison_table` lays the site summaries of :func:`fedglioma.evaluate.site.summarise_site` side by side
(one row per metric, one column per model), adds the reference/baseline ratio (federated / centralized by
default) and, for AUC rows, paired bootstrap p-values of the reference against every other model.

The paired bootstrap needs per-subject predictions of both models on the same subjects, so
:func:`paired_auc_tests` runs inside the external site's scope on the models' prediction tables; only the
resulting p-values and differences leave the site.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedglioma import metrics as M
from fedglioma.atomic import write_text
from fedglioma.endpoints import POPULATION_LABEL, Endpoints
from fedglioma.errors import InputError
from fedglioma.evaluate.site import MARKER_NAME, MARKERS, SCORE_COLUMN, marker_targets, merge_site_table

REFERENCE = "federated"
BASELINE = "centralized"
#: Model names are ``federated``, ``centralized`` and ``local-<site>`` (local-only training at one site).


def model_order(names: list[str] | tuple[str, ...] | Any) -> list[str]:
    """Federated, centralized, then ``local-*`` models, then any others (each group sorted)."""
    names = list(names)
    fixed = [n for n in (REFERENCE, BASELINE) if n in names]
    local = sorted(n for n in names if n.startswith("local-"))
    rest = sorted(n for n in names if n not in fixed and n not in local)
    return fixed + local + rest


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def metric_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten one model's site summary into rows ``key, metric, better, interval, value, low, high, n``."""
    rows: list[dict[str, Any]] = []

    def add(
        key: str,
        metric: str,
        better: str,
        value: Any,
        low: Any = None,
        high: Any = None,
        n: Any = None,
        interval: str = "",
    ) -> None:
        rows.append(
            {
                "key": key,
                "metric": metric,
                "better": better,
                "interval": interval,
                "value": _num(value),
                "low": _num(low),
                "high": _num(high),
                "n": _num(n),
            }
        )

    seg = summary.get("segmentation", {})
    if seg.get("estimable"):
        d, h, v = seg["dice"], seg["hd95_mm"], seg["abs_volume_diff_ml"]
        add("dice_median", "Dice median", "higher", d["median"], d["q1"], d["q3"], d["n"], "IQR")
        add("dice_mean", "Dice mean", "higher", d["mean"], n=d["n"])
        add("hd95_median", "HD95 median (mm)", "lower", h["median"], h["q1"], h["q3"], h["n"], "IQR")
        add(
            "abs_volume_diff_median",
            "|volume difference| median (mL)",
            "lower",
            v["median"],
            v["q1"],
            v["q3"],
            v["n"],
            "IQR",
        )
    markers = summary.get("markers", {})
    for marker in MARKERS:
        res = markers.get(marker, {})
        name = MARKER_NAME[marker]
        if marker == "codeletion" and res.get("population"):
            name = f"{name} ({POPULATION_LABEL[res['population']]})"
        ok = bool(res.get("estimable"))
        ci = f"{int(round(100 * res.get('level', 0.95)))}% CI"
        add(
            f"auc:{marker}",
            f"AUC {name}",
            "higher",
            res.get("auc") if ok else None,
            res.get("auc_ci_low"),
            res.get("auc_ci_high"),
            res.get("n"),
            ci,
        )
        for rate in ("sensitivity", "specificity", "accuracy"):
            add(
                f"{rate}:{marker}",
                f"{rate.capitalize()} {name}",
                "higher",
                res.get(rate) if ok else None,
                res.get(f"{rate}_ci_low"),
                res.get(f"{rate}_ci_high"),
                res.get("n"),
                ci,
            )
        add(f"brier:{marker}", f"Brier {name}", "lower", res.get("brier") if ok else None, n=res.get("n"))
        other = res.get("other_population")
        if marker == "codeletion" and other:
            add(
                "auc:codeletion_other",
                f"AUC {name} ({other.get('label', other.get('population'))})",
                "higher",
                other.get("auc") if other.get("estimable") else None,
                other.get("ci_low"),
                other.get("ci_high"),
                other.get("n"),
                ci,
            )
        if marker == "grade":
            ovr = res.get("ovr_macro", {})
            add(
                "auc:grade_ovr",
                "AUC grade 2/3/4 (macro OvR)",
                "higher",
                ovr.get("auc") if ovr.get("estimable") else None,
                ovr.get("ci_low"),
                ovr.get("ci_high"),
                ovr.get("n"),
                ci,
            )
    return rows


def paired_auc_tests(
    predictions: Mapping[str, pd.DataFrame],
    labels: pd.DataFrame,
    *,
    reference: str = REFERENCE,
    n_boot: int = M.DEFAULT_N_BOOT,
    seed: int = 0,
    site: str | None = None,
    endpoints: Endpoints | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired bootstrap AUC tests of ``reference`` against every other model, per marker (grade: 4 vs 2-3).

    Runs in the external site's scope: ``predictions`` maps model -> that model's predictions table on the site,
    ``labels`` is the site's labels table. Only subjects predicted by both models and labelled for the marker
    enter. Returns ``{other_model: {marker: result of paired_bootstrap_auc}}`` (aggregates only).
    """
    if reference not in predictions:
        raise InputError(f"no predictions of the reference model {reference!r} (have {sorted(predictions)})", site=site)
    ref_table, _ = merge_site_table(predictions[reference], labels, site=site)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for other in model_order([m for m in predictions if m != reference]):
        other_table, _ = merge_site_table(predictions[other], labels, site=site)
        both = ref_table.merge(
            other_table[["subject", *[c for c in other_table.columns if c.startswith("p_")]]],
            on="subject",
            suffixes=("", "__other"),
        )
        out[other] = {}
        for i, marker in enumerate(MARKERS):
            y, p_ref = marker_targets(both, marker, endpoints)
            p_other = both[f"{SCORE_COLUMN[marker]}__other"].to_numpy(dtype=np.float64)
            res = M.paired_bootstrap_auc(y, p_ref, p_other, n_boot=n_boot, seed=[seed, i])
            res["n_common_subjects"] = int(len(both))
            out[other][marker] = res
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def comparison_table(
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    tests: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    reference: str = REFERENCE,
    baseline: str = BASELINE,
) -> pd.DataFrame:
    """One row per metric; columns ``metric, key, better, interval``, then per model ``<model>``,
    ``<model>_low``, ``<model>_high``, ``<model>_n``; then ``ratio_<reference>_<baseline>`` (when both models are
    present) and, for AUC rows, ``p_<reference>_vs_<other>`` from ``tests`` (see :func:`paired_auc_tests`)."""
    if not metrics:
        raise InputError("no model metrics to compare")
    models = model_order(metrics)
    wide: pd.DataFrame | None = None
    for model in models:
        rows = pd.DataFrame(metric_rows(metrics[model]))
        if rows.empty:
            continue
        rows = rows.rename(columns={"value": model, "low": f"{model}_low", "high": f"{model}_high", "n": f"{model}_n"})
        wide = (
            rows
            if wide is None
            else wide.merge(rows, on=["key", "metric", "better", "interval"], how="outer", sort=False)
        )
    if wide is None:
        raise InputError("the model summaries hold no metrics")
    # stable, meaningful row order: the order metric_rows produces, first model first
    order = {k: i for i, k in enumerate(r["key"] for m in models for r in metric_rows(metrics[m]))}
    wide = wide.sort_values("key", key=lambda s: s.map(order)).reset_index(drop=True)
    wide = wide[
        [
            "metric",
            "key",
            "better",
            "interval",
            *[c for c in wide.columns if c not in ("metric", "key", "better", "interval")],
        ]
    ]
    for model in models:
        if f"{model}_n" in wide.columns:
            wide[f"{model}_n"] = wide[f"{model}_n"].round().astype("Int64")
    if reference in metrics and baseline in metrics:
        ref, base = wide[reference], wide[baseline]
        wide[f"ratio_{_safe(reference)}_{_safe(baseline)}"] = np.where(
            np.isfinite(ref) & np.isfinite(base) & (base != 0), ref / base.where(base != 0, np.nan), np.nan
        )
    if tests:
        for other in model_order(tests):
            col = f"p_{_safe(reference)}_vs_{_safe(other)}"
            wide[col] = [
                _num(tests[other].get(k.split(":", 1)[1], {}).get("p_value"))
                if k.startswith("auc:") and k != "auc:grade_ovr"
                else math.nan
                for k in wide["key"]
            ]
    return wide


def format_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Display version of :func:`comparison_table`: metric with ↑/↓ (higher/lower is better), one text cell per
    model, ``value [low–high]``; an ``n`` column when every model rests on the same n (else ``(n=..)`` in each
    cell); the ratio (``federated / centralized``) to 2 decimals and p-values of the reference against each model
    (``p vs <model>``) to 3 (``<0.001`` below)."""
    value_cols = [
        c
        for c in table.columns
        if c not in ("metric", "key", "better", "interval")
        and not c.endswith(("_low", "_high", "_n"))
        and not c.startswith(("ratio_", "p_"))
    ]
    arrow = table["better"].map({"higher": " ↑", "lower": " ↓"}).fillna("")
    out = pd.DataFrame({"Metric": table["metric"] + arrow, "Interval": table["interval"].fillna("").astype(str)})
    n_cells = []
    for _, r in table.iterrows():
        ns = {int(r[f"{m}_n"]) for m in value_cols if not pd.isna(r[f"{m}_n"]) and np.isfinite(r[m])}
        n_cells.append(str(ns.pop()) if len(ns) == 1 else ("–" if not ns else ""))
    for m in value_cols:
        cells = []
        for (_, r), n_shared in zip(table.iterrows(), n_cells, strict=True):
            v = r[m]
            if not np.isfinite(v):
                cells.append("–")
                continue
            digits = 1 if ("(mm)" in r["metric"] or "(mL)" in r["metric"]) else 3
            cell = f"{v:.{digits}f}"
            if np.isfinite(r[f"{m}_low"]) and np.isfinite(r[f"{m}_high"]):
                cell += f" [{r[f'{m}_low']:.{digits}f}–{r[f'{m}_high']:.{digits}f}]"
            if not n_shared and not pd.isna(r[f"{m}_n"]):
                cell += f" (n={int(r[f'{m}_n'])})"
            cells.append(cell)
        out[m] = cells
    out["n"] = n_cells
    for c in table.columns:
        if c.startswith("ratio_"):
            out[_ratio_label(c)] = [f"{v:.2f}" if np.isfinite(v) else "–" for v in table[c]]
        elif c.startswith("p_"):
            out["p vs " + c.split("_vs_", 1)[1]] = [
                ("<0.001" if v < 0.001 else f"{v:.3f}") if np.isfinite(v) else "" for v in table[c]
            ]
    return out


def _ratio_label(col: str) -> str:
    """``ratio_federated_centralized`` -> ``federated / centralized`` (model names may hold ``_``)."""
    body = col[len("ratio_") :]
    if body.startswith(REFERENCE + "_"):
        return f"{REFERENCE} / {body[len(REFERENCE) + 1 :]}"
    return f"ratio {body}"


def write_comparison(table: pd.DataFrame, out_tsv: str | Path) -> Path:
    """Write the table atomically as TSV (missing values as empty cells)."""
    write_text(out_tsv, table.to_csv(sep="\t", index=False, na_rep=""))
    return Path(out_tsv)


def compare_models(
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    predictions: Mapping[str, pd.DataFrame] | None = None,
    labels: pd.DataFrame | None = None,
    reference: str = REFERENCE,
    baseline: str = BASELINE,
    n_boot: int = M.DEFAULT_N_BOOT,
    seed: int = 0,
    out_tsv: str | Path | None = None,
    site: str | None = None,
    endpoints: Endpoints | None = None,
) -> pd.DataFrame:
    """:func:`comparison_table` with paired tests computed from ``predictions`` + ``labels`` when both are given
    (inside the external site's scope); optionally written to ``out_tsv``."""
    endpoints = endpoints or Endpoints()
    for model, summary in metrics.items():
        used = summary.get("endpoints")
        if used is not None and Endpoints.model_validate(used) != endpoints:
            raise InputError(
                f"model {model} was evaluated with endpoints {used}, the comparison uses {endpoints.model_dump()}",
                site=site,
                fix="rerun the evaluation with one config (endpoints:)",
            )
    tests = None
    if predictions and labels is not None and reference in predictions and len(predictions) > 1:
        tests = paired_auc_tests(
            predictions, labels, reference=reference, n_boot=n_boot, seed=seed, site=site, endpoints=endpoints
        )
    table = comparison_table(metrics, tests=tests, reference=reference, baseline=baseline)
    if out_tsv is not None:
        write_comparison(table, out_tsv)
    return table


def compare_external(metrics: Sequence[str], predictions: Sequence[str], labels: str, table: str, *,
                     models: Sequence[str], site: str, evaluation_cfg: Mapping[str, Any],
                     endpoints_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Rule ``compare`` / ``fedglioma evaluate compare`` (external site scope): federated vs centralized vs
    local-only with ratios and paired bootstrap p-values, written to ``table``.

    Args:
        metrics, predictions: each model's ``metrics.json`` and ``predictions.tsv`` on the site, in the order of
            ``models``.
        labels: the site's ``labels.tsv``.
        models: model names (``federated``, ``centralized``, ``local-<site>``).
        evaluation_cfg: the config's ``evaluation`` section (``n_bootstrap``, ``seed``).
    """
    from fedglioma.io.clinical import read_labels
    from fedglioma.io.files import read_json, read_tsv
    from fedglioma.settings import EvaluationConfig, section

    ev = section(EvaluationConfig, evaluation_cfg, "evaluation")
    return compare_models(
        {m: read_json(p, what=f"metrics of model {m}") for m, p in zip(models, metrics, strict=True)},
        predictions={m: read_tsv(p, what=f"predictions of model {m}") for m, p in zip(models, predictions, strict=True)},
        labels=read_labels(labels),
        n_boot=ev.n_bootstrap,
        seed=ev.seed,
        out_tsv=table,
        site=site,
        endpoints=section(Endpoints, endpoints_cfg, "endpoints"),
    )
