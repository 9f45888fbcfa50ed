"""The standalone HTML report: one ``index.html`` that needs nothing but a browser.

The page is rendered from the Jinja2 template ``templates/report.html.j2`` with autoescaping on, so every value
from the context is HTML-escaped by the template. This module builds the context: the tables as pandas
DataFrames (:func:`headline_table`, :func:`marker_table`, :func:`segmentation_table`, the cohort table of
:mod:`fedglioma.report.cohort`), figures and provenance as plain data (:func:`report_context`); the template only
lays them out (:func:`render_report`). Tables go into the page through ``DataFrame.to_html(escape=True)``, the one
piece of HTML that is not escaped again.

Every figure is embedded as a base64 ``data:`` URI; CSS (``templates/report.css``) is inline; a
Content-Security-Policy forbids any network request (``default-src 'none'; img-src data:``). A tiny inline script
(``templates/report.js``) records whether every image decoded and whether any script error occurred
(``<html data-images-ok="n/m" data-js-errors="k">``), which the browser test reads.

Sections (ids in parentheses): headline metrics (``headline``), cohort per site (``cohort``), QC overlay per site
(``qc``), training curves (``training``), ROC curves (``roc``), reliability (``reliability``), Dice distribution
(``dice``), best/median/worst overlays (``overlays``), model comparison (``comparison``), other figures
(``figures``, only if any), provenance (``provenance``). The four external-evaluation sections are left out when
the federated model's external evaluation is not applicable (``metrics["not_applicable"]``).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from fedglioma.atomic import write_text
from fedglioma.constants import GRADES
from fedglioma.endpoints import POPULATION_LABEL
from fedglioma.errors import InputError
from fedglioma.evaluate.site import MARKER_NAME, MARKERS
from fedglioma.report.cohort import cohort_table

SYNTHETIC_BANNER = "Synthetic data, not for clinical conclusions."
#: Figure names with a section of their own (``overlay*`` names go to the overlays section).
KNOWN_FIGURES: tuple[str, ...] = ("roc", "reliability", "dice")
TEMPLATE = "report.html.j2"


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{v:.{digits}f}" if np.isfinite(v) else "–"


def _interval(lo: Any, hi: Any, digits: int = 3) -> str:
    a, b = _f(lo, digits), _f(hi, digits)
    return "–" if a == "–" and b == "–" else f"{a}–{b}"


def data_uri(path: str | Path, *, name: str = "figure") -> str:
    """Read an image file and return it as a ``data:`` URI (PNG, JPEG or SVG, recognised by content)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{name}: image not found", file=p, fix="make the figure first or leave it out")
    raw = p.read_bytes()
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif raw.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    elif raw.lstrip()[:5] in (b"<?xml", b"<svg ") or raw.lstrip().startswith(b"<svg"):
        mime = "image/svg+xml"
    else:
        raise InputError(f"{name}: not a PNG, JPEG or SVG image", file=p)
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


@dataclass(frozen=True)
class Figure:
    """A figure of the page: ``src`` is the image as a ``data:`` URI, or None for "<caption>: not available"."""

    caption: str
    src: str | None


def _figure(path: str | Path | None, caption: str, *, name: str) -> Figure:
    """The image at ``path`` embedded (``name`` says which image in an error), or "not available" if None."""
    return Figure(caption, None if path is None else data_uri(path, name=name))


def _table_html(df: pd.DataFrame, *, extra_class: str = "") -> Markup | None:
    """A table as HTML for the template (None when there are no rows: the template says so)."""
    if df.empty:
        return None
    html = df.to_html(index=False, escape=True, classes=["table", *extra_class.split()], border=0, na_rep="–",
                      justify="left")
    # The one place raw HTML enters the page: pandas has escaped every header and cell (escape=True) and the
    # classes are this module's constants, so the template may insert it as it is.
    return Markup(html)


def _is_synthetic(provenance: Mapping[str, Any]) -> bool:
    if "synthetic" in provenance:
        return bool(provenance["synthetic"])
    config = provenance.get("config")
    if isinstance(config, Mapping):
        demo = config.get("demo")
        if isinstance(demo, Mapping):
            return bool(demo.get("enabled"))
    return False


# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------


def headline_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Headline metrics of the external site: median Dice and the four AUCs (plus grade macro one-vs-rest) with
    their intervals and the n behind each. Columns ``Metric, Estimate, Interval, n``."""
    rows: list[dict[str, str]] = []
    seg = metrics.get("segmentation", {}) or {}
    if seg.get("estimable"):
        d = seg["dice"]
        n = f"{d['n']}" + (f" ({d['n_undefined']} undefined)" if d.get("n_undefined") else "")
        rows.append(
            {
                "Metric": "Dice, whole tumour (median)",
                "Estimate": _f(d["median"]),
                "Interval": f"IQR {_interval(d['q1'], d['q3'])}",
                "n": n,
            }
        )
    else:
        rows.append(
            {
                "Metric": "Dice, whole tumour (median)",
                "Estimate": "not estimable",
                "Interval": seg.get("reason", "no segmentation rows"),
                "n": "0",
            }
        )
    level = int(round(100 * float(metrics.get("level", 0.95))))
    markers = metrics.get("markers", {}) or {}
    for marker in MARKERS:
        res = markers.get(marker)
        name = f"AUC {MARKER_NAME[marker]}"
        if res is not None and marker == "codeletion" and res.get("population"):
            name += f" ({POPULATION_LABEL.get(res['population'], res['population'])})"
        if res is None:
            rows.append({"Metric": name, "Estimate": "not computed", "Interval": "", "n": ""})
            continue
        n = f"{res.get('n', 0)} ({res.get('n_pos', 0)} pos / {res.get('n_neg', 0)} neg)"
        if res.get("estimable"):
            rows.append(
                {
                    "Metric": name,
                    "Estimate": _f(res["auc"]),
                    "Interval": f"{level}% CI {_interval(res['auc_ci_low'], res['auc_ci_high'])}",
                    "n": n,
                }
            )
        else:
            rows.append({"Metric": name, "Estimate": "not estimable", "Interval": str(res.get("reason", "")), "n": n})
        other = res.get("other_population")
        if marker == "codeletion" and isinstance(other, Mapping):
            o_name = f"AUC {MARKER_NAME[marker]} ({other.get('label', other.get('population'))}; secondary)"
            o_n = f"{other.get('n', 0)} ({other.get('n_pos', 0)} pos / {other.get('n_neg', 0)} neg)"
            if other.get("estimable"):
                o_ci = f"{level}% CI {_interval(other['ci_low'], other['ci_high'])}"
                rows.append({"Metric": o_name, "Estimate": _f(other["auc"]), "Interval": o_ci, "n": o_n})
            else:
                rows.append({"Metric": o_name, "Estimate": "not estimable", "Interval": str(other.get("reason", "")),
                             "n": o_n})
        if marker == "grade" and isinstance(res.get("ovr_macro"), Mapping):
            ovr = res["ovr_macro"]
            per = ovr.get("n_per_class", {}) or {}
            n_ovr = f"{ovr.get('n', 0)} (" + " / ".join(f"g{g}: {per.get(str(g), per.get(g, 0))}" for g in GRADES) + ")"
            if ovr.get("estimable"):
                rows.append(
                    {
                        "Metric": "AUC grade 2/3/4 (macro one-vs-rest)",
                        "Estimate": _f(ovr["auc"]),
                        "Interval": f"{level}% CI {_interval(ovr['ci_low'], ovr['ci_high'])}",
                        "n": n_ovr,
                    }
                )
            else:
                rows.append(
                    {
                        "Metric": "AUC grade 2/3/4 (macro one-vs-rest)",
                        "Estimate": "not estimable",
                        "Interval": str(ovr.get("reason", "")),
                        "n": n_ovr,
                    }
                )
    return pd.DataFrame(rows, columns=["Metric", "Estimate", "Interval", "n"])


def headline_text(metrics: Mapping[str, Any], *, title: str | None = None, synthetic: bool = False) -> str:
    """The headline metrics as a plain-text table for the terminal (``make demo`` prints it)."""
    site = metrics.get("site")
    head = title or (f"Headline metrics, external site {site}" if site else "Headline metrics, external site")
    lines = [head, "=" * len(head)]
    if synthetic:
        lines.append(f"!! {SYNTHETIC_BANNER}")
    if metrics.get("not_applicable"):
        lines.append(f"Federated model on the external site: not applicable. {metrics['not_applicable']}")
        return "\n".join(lines) + "\n"
    table = headline_table(metrics)
    widths = [max(len(str(c)), *(len(str(v)) for v in table[c])) for c in table.columns]
    lines.append("  ".join(str(c).ljust(w) for c, w in zip(table.columns, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in table.itertuples(index=False):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def marker_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per-marker details: n, missing labels, AUC [CI], threshold, sensitivity/specificity/accuracy [CI], Brier."""
    rows = []
    for marker in MARKERS:
        res = (metrics.get("markers", {}) or {}).get(marker)
        if res is None:
            continue
        pop = f" ({POPULATION_LABEL.get(res['population'], res['population'])})" if res.get("population") else ""
        row = {
            "Marker": MARKER_NAME[marker] + pop,
            "n (pos/neg)": f"{res.get('n', 0)} ({res.get('n_pos', 0)}/{res.get('n_neg', 0)})",
            "Missing label": str(res.get("n_missing_label", "–")),
        }
        if not res.get("estimable"):
            row.update({"AUC [CI]": f"not estimable: {res.get('reason', '')}"})
            rows.append(row)
            continue
        row["AUC [CI]"] = f"{_f(res['auc'])} [{_interval(res['auc_ci_low'], res['auc_ci_high'])}]"
        if res.get("threshold") is None:
            row["Threshold"] = "none: " + str(res.get("threshold_reason") or "not given")
        else:
            row["Threshold"] = _f(res["threshold"])
            for rate in ("sensitivity", "specificity", "accuracy"):
                row[f"{rate.capitalize()} [CI]"] = (
                    f"{_f(res.get(rate))} [{_interval(res.get(f'{rate}_ci_low'), res.get(f'{rate}_ci_high'))}]"
                )
        row["Brier"] = _f(res.get("brier"))
        rows.append(row)
    cols = [
        "Marker",
        "n (pos/neg)",
        "Missing label",
        "AUC [CI]",
        "Threshold",
        "Sensitivity [CI]",
        "Specificity [CI]",
        "Accuracy [CI]",
        "Brier",
    ]
    return pd.DataFrame(rows).reindex(columns=cols)


def segmentation_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Segmentation summary: Dice, HD95 and volume difference (median, IQR, mean, n)."""
    seg = metrics.get("segmentation", {}) or {}
    if not seg.get("estimable"):
        return pd.DataFrame()
    rows = []
    for key, name, digits in (
        ("dice", "Dice", 3),
        ("hd95_mm", "HD95 (mm)", 2),
        ("volume_diff_ml", "Volume difference, predicted − reference (mL)", 2),
        ("abs_volume_diff_ml", "|Volume difference| (mL)", 2),
    ):
        s = seg.get(key)
        if not s:
            continue
        rows.append(
            {
                "Metric": name,
                "Median": _f(s["median"], digits),
                "IQR": _interval(s["q1"], s["q3"], digits),
                "Mean": _f(s["mean"], digits),
                "n": s["n"],
                "Undefined": s.get("n_undefined", 0),
            }
        )
    for key, name, digits in (("dice", "Dice", 3), ("hd95_mm", "HD95 (mm)", 2)):
        s = (seg.get("network_grid") or {}).get(key)
        if s:
            rows.append(
                {
                    "Metric": f"{name}, network grid (secondary)",
                    "Median": _f(s["median"], digits),
                    "IQR": _interval(s["q1"], s["q3"], digits),
                    "Mean": _f(s["mean"], digits),
                    "n": s["n"],
                    "Undefined": s.get("n_undefined", 0),
                }
            )
    return pd.DataFrame(rows)


def _overlay_caption(name: str) -> str:
    rest = name.removeprefix("overlays").removeprefix("overlay").strip("_- ")
    if not rest:
        return "Best, median and worst subject by Dice (slice with the largest reference tumour area)"
    return f"{rest.replace('_', ' ').capitalize()} subject by Dice"


def _comparison_display(comparison: pd.DataFrame) -> pd.DataFrame:
    if "key" in comparison.columns:
        from fedglioma.evaluate.compare import format_comparison

        return format_comparison(comparison)
    return comparison


@dataclass(frozen=True)
class ProvenanceBlock:
    """A titled part of the provenance section: a table (``text`` None; ``table`` None if it has no rows) or
    preformatted text shown collapsed."""

    title: str
    table: Markup | None = None
    text: str | None = None


def _provenance(provenance: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[ProvenanceBlock]]:
    """Scalar entries as (label, value) rows; package versions as a table; other mappings and lists as JSON and
    the configuration as YAML (JSON if it cannot be), each a collapsed block, the configuration last."""
    rows: list[tuple[str, str]] = []
    blocks: list[ProvenanceBlock] = []
    labels = {"git_commit": "Git commit", "model_sha256": "SHA-256 of the final model", "synthetic": "Synthetic data"}
    for key, value in provenance.items():
        if key == "config":
            continue
        if key == "packages" and isinstance(value, Mapping):
            pk = pd.DataFrame({"Package": list(value), "Version": [str(v) for v in value.values()]})
            blocks.append(ProvenanceBlock("Package versions", table=_table_html(pk)))
        elif isinstance(value, Mapping | list | tuple):
            blocks.append(ProvenanceBlock(key, text=json.dumps(value, indent=2, sort_keys=True, default=str)))
        else:
            rows.append((labels.get(key, key.replace("_", " ")), str(value)))
    if "config" in provenance:
        config = provenance["config"]
        if isinstance(config, str):
            text = config
        else:
            try:
                import yaml

                text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
            except Exception:  # non-YAML-able values: fall back to JSON
                text = json.dumps(config, indent=2, default=str)
        blocks.append(ProvenanceBlock("Configuration", text=text))
    return rows, blocks


# --------------------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------------------


def report_context(
    *,
    cohort: Sequence[Mapping[str, Any]],
    qc_exclusions: pd.DataFrame,
    qc_flagged: Mapping[str, int] | None = None,
    qc_images: Mapping[str, Path],
    training_curves: Path | None,
    metrics: Mapping[str, Any],
    comparison: pd.DataFrame | None,
    training: pd.DataFrame | None = None,
    figures: Mapping[str, Path],
    provenance: Mapping[str, Any],
    synthetic: bool | None = None,
    title: str = "fedglioma: federated glioma MRI, external evaluation",
    privacy: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as data (arguments as for :func:`build_report`; images are read here, so a
    missing one is an :class:`~fedglioma.errors.InputError` before anything is written).

    Keys: ``title``, ``site``, ``synthetic_banner`` (None unless synthetic), ``sections`` (ids in page order),
    ``not_applicable``, ``n_boot``, ``seed``, ``evaluation`` (:func:`_evaluation`; None when the external
    evaluation is not applicable), ``cohort_table``, ``comparison_table`` (tables as HTML, None when empty or not
    given), ``privacy_table`` (each training site's spent (epsilon, delta); None without DP), ``qc_figures``,
    ``training_figure``, ``other_figures`` (:class:`Figure` s), ``provenance_rows``
    ((label, value) pairs) and ``provenance_blocks`` (:class:`ProvenanceBlock` s).
    """
    synthetic = _is_synthetic(provenance) if synthetic is None else synthetic
    not_applicable = metrics.get("not_applicable")
    evaluation = None if not_applicable else _evaluation(metrics, figures)
    others = {k: v for k, v in figures.items() if k not in KNOWN_FIGURES and not k.startswith("overlay")}
    sections = ["headline", "cohort", "qc", "training"]
    if evaluation is not None:
        sections += ["roc", "reliability", "dice", "overlays"]
    sections.append("comparison")
    if others:
        sections.append("figures")
    sections.append("provenance")
    provenance_rows, provenance_blocks = _provenance(provenance)
    return {
        "title": title,
        "site": metrics.get("site"),
        "synthetic_banner": SYNTHETIC_BANNER if synthetic else None,
        "sections": sections,
        "not_applicable": not_applicable,
        "n_boot": metrics.get("n_boot", "–"),
        "seed": metrics.get("seed", "–"),
        "evaluation": evaluation,
        "cohort_table": _table_html(cohort_table(cohort, qc_exclusions, qc_flagged)),
        "qc_figures": [_figure(p, f"site {s}", name=f"QC image of site {s}") for s, p in sorted(qc_images.items())],
        "training_figure": _figure(
            training_curves, "Loss, validation Dice and mean validation AUC per site and round", name="training curves"
        ),
        "participation": participation(training),
        "privacy_table": None if privacy is None else _table_html(privacy, extra_class="nowrap"),
        "comparison_table": None
        if comparison is None or comparison.empty
        else _table_html(_comparison_display(comparison), extra_class="nowrap"),
        "other_figures": [_figure(p, k, name=k) for k, p in others.items()],
        "provenance_rows": provenance_rows,
        "provenance_blocks": provenance_blocks,
    }


def participation(training: pd.DataFrame | None) -> dict[str, Any] | None:
    """Who took part in each federated round, from the training-curves table: ``table`` (HTML, rounds x sites;
    ``✓`` aggregated, ``clipped xS``, ``not_kept``, ``failed``, ``refused``, ``direction``, ``norm``), ``reasons`` (one line per site and round
    left out or clipped) and ``complete`` (every site took part unclipped in every round). ``None`` without a
    table or without a ``status`` column."""
    if training is None or training.empty or "status" not in training:
        return None
    t = training.fillna({"status": "", "note": ""}).astype({"status": str, "note": str})
    marks = {"aggregated": "✓", "clipped": "clipped"}
    cells = t.assign(cell=[marks.get(s, s or "–") + (f" {n}" if s == "clipped" else "")
                           for s, n in zip(t["status"], t["note"], strict=True)])
    grid = cells.pivot(index="round", columns="site", values="cell").sort_index()
    grid.index.name = "round"
    odd = t[t["status"] != "aggregated"]
    reasons = [f"round {r.round}, site {r.site}: {r.status}" + (f" ({r.note})" if r.note else "")
               for r in odd.sort_values(["round", "site"]).itertuples()]
    return {"table": _table_html(grid.reset_index()), "reasons": reasons, "complete": odd.empty}


def _evaluation(metrics: Mapping[str, Any], figures: Mapping[str, Path]) -> dict[str, Any]:
    """The external evaluation's tables (HTML, None when empty) and figures: ``headline_table``, ``roc_figure``,
    ``marker_table``, ``reliability_figure``, ``dice_figure``, ``segmentation_table``, ``overlay_figures``."""
    level = int(round(100 * float(metrics.get("level", 0.95))))
    return {
        "headline_table": _table_html(headline_table(metrics), extra_class="headline nowrap"),
        "roc_figure": _figure(
            figures.get("roc"), f"ROC curves per marker with {level}% bootstrap bands (external site)", name="roc"
        ),
        "marker_table": _table_html(marker_table(metrics), extra_class="nowrap"),
        "reliability_figure": _figure(
            figures.get("reliability"),
            "Reliability curves (uniform bins; point area ∝ subjects in the bin) and Brier scores",
            name="reliability",
        ),
        "dice_figure": _figure(figures.get("dice"), "Dice per subject (box: quartiles; points: subjects)", name="dice"),
        "segmentation_table": _table_html(segmentation_table(metrics)),
        "overlay_figures": [
            _figure(p, _overlay_caption(k), name=k) for k, p in figures.items() if k.startswith("overlay")
        ],
    }


@functools.cache
def _environment() -> jinja2.Environment:
    """The template environment: the package's ``templates/`` folder, autoescaping on, undefined names an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fedglioma.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_report(context: Mapping[str, Any]) -> str:
    """The page from :func:`report_context`'s output."""
    return _environment().get_template(TEMPLATE).render(context)


def build_report(
    out_html: Path,
    *,
    cohort: Sequence[Mapping[str, Any]],
    qc_exclusions: pd.DataFrame,
    qc_flagged: Mapping[str, int] | None = None,
    qc_images: Mapping[str, Path],
    training_curves: Path | None,
    metrics: Mapping[str, Any],
    comparison: pd.DataFrame | None,
    training: pd.DataFrame | None = None,
    figures: Mapping[str, Path],
    provenance: Mapping[str, Any],
    synthetic: bool | None = None,
    title: str = "fedglioma: federated glioma MRI, external evaluation",
    privacy: pd.DataFrame | None = None,
) -> None:
    """Write the standalone report to ``out_html`` (atomically).

    ``cohort`` holds the sites' cohort summaries (:func:`fedglioma.io.clinical.cohort_summary`; from a per-subject
    table: :func:`fedglioma.report.cohort.cohort_summaries`), formatted with ``qc_exclusions`` (``site, subject,
    reason``) and ``qc_flagged`` by :func:`fedglioma.report.cohort.cohort_table`.
    ``metrics`` is the external site's summary (:func:`fedglioma.evaluate.site.summarise_site`); ``figures``
    maps names to image files: ``roc``, ``reliability``, ``dice``, and ``overlay*`` (e.g. ``overlays`` or
    ``overlay_best``/``overlay_median``/``overlay_worst``); any other name is shown under "Other figures".
    ``qc_images`` maps site -> QC overlay image. ``comparison`` is :func:`fedglioma.evaluate.compare.comparison_table`
    output (or any table, shown as given). ``provenance`` holds e.g. ``config``, ``packages`` (name -> version),
    ``git_commit``, ``model_sha256``; other keys are shown too. ``synthetic`` (default: ``provenance["synthetic"]``,
    else ``provenance["config"]["demo"]["enabled"]``) adds the synthetic-data banner.
    """
    context = report_context(
        cohort=cohort,
        qc_exclusions=qc_exclusions,
        qc_flagged=qc_flagged,
        qc_images=qc_images,
        training_curves=training_curves,
        metrics=metrics,
        comparison=comparison,
        training=training,
        figures=figures,
        provenance=provenance,
        synthetic=synthetic,
        title=title,
        privacy=privacy,
    )
    write_text(out_html, render_report(context))
