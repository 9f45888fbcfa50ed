"""The standalone HTML report: one ``index.html`` that needs nothing but a browser.

Every figure is embedded as a base64 ``data:`` URI; CSS is inline; a Content-Security-Policy forbids any network
request (``default-src 'none'; img-src data:``). A tiny inline script records whether every image decoded and
whether any script error occurred (``<html data-images-ok="n/m" data-js-errors="k">``), which the browser test
reads.

Sections (ids in parentheses): headline metrics (``headline``), cohort per site (``cohort``), QC overlay per site
(``qc``), training curves (``training``), ROC curves (``roc``), reliability (``reliability``), Dice distribution
(``dice``), best/median/worst overlays (``overlays``), model comparison (``comparison``), other figures
(``figures``, only if any), provenance (``provenance``).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedglioma.atomic import write_text
from fedglioma.constants import GRADES
from fedglioma.endpoints import POPULATION_LABEL
from fedglioma.errors import InputError
from fedglioma.evaluate.site import MARKER_NAME, MARKERS
from fedglioma.report.cohort import cohort_table

SYNTHETIC_BANNER = "Synthetic data, not for clinical conclusions."
#: Figure names with a section of their own (``overlay*`` names go to the overlays section).
KNOWN_FIGURES: tuple[str, ...] = ("roc", "reliability", "dice")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_SCRIPT = """
(function () {
  var errors = 0, root = document.documentElement;
  root.setAttribute("data-js-errors", "0");
  window.addEventListener("error", function () { errors += 1; root.setAttribute("data-js-errors", String(errors)); },
                          true);
  window.addEventListener("load", function () {
    var imgs = document.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok += 1; } else { imgs[i].setAttribute("data-broken", "1"); }
    }
    root.setAttribute("data-images-ok", ok + "/" + imgs.length);
  });
})();
"""


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


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


def _figure(path: str | Path | None, caption: str, *, name: str, alt: str | None = None) -> str:
    if path is None:
        return f'<p class="muted">{_e(caption)}: not available.</p>'
    return (
        f'<figure><img src="{data_uri(path, name=name)}" alt="{_e(alt or caption)}" loading="eager">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _table(df: pd.DataFrame, *, extra_class: str = "") -> str:
    if df is None or df.empty:
        return '<p class="muted">No rows.</p>'
    classes = ["table", *extra_class.split()]
    body = df.to_html(index=False, escape=True, classes=classes, border=0, na_rep="–", justify="left")
    return f'<div class="scroll">{body}</div>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


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


def _provenance_html(provenance: Mapping[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    blocks: list[str] = []
    labels = {"git_commit": "Git commit", "model_sha256": "SHA-256 of the final model", "synthetic": "Synthetic data"}
    for key, value in provenance.items():
        if key == "config":
            continue
        if key == "packages" and isinstance(value, Mapping):
            pk = pd.DataFrame({"Package": list(value), "Version": [str(v) for v in value.values()]})
            blocks.append(f"<h3>Package versions</h3>{_table(pk)}")
        elif isinstance(value, Mapping | list | tuple):
            text = json.dumps(value, indent=2, sort_keys=True, default=str)
            blocks.append(f"<details><summary>{_e(key)}</summary><pre><code>{_e(text)}</code></pre></details>")
        else:
            rows.append((labels.get(key, key.replace("_", " ")), f"<code>{_e(value)}</code>"))
    body = ""
    if rows:
        body += (
            '<div class="scroll"><table class="table"><tbody>'
            + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
            + "</tbody></table></div>"
        )
    body += "".join(blocks)
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
        body += f"<details><summary>Configuration</summary><pre><code>{_e(text)}</code></pre></details>"
    return body or '<p class="muted">No provenance given.</p>'


# --------------------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------------------


def build_report(
    out_html: Path,
    *,
    cohort: Sequence[Mapping[str, Any]],
    qc_exclusions: pd.DataFrame,
    qc_flagged: Mapping[str, int] | None = None,
    qc_images: dict[str, Path],
    training_curves: Path | None,
    metrics: dict,
    comparison: pd.DataFrame | None,
    figures: dict[str, Path],
    provenance: dict,
    synthetic: bool | None = None,
    title: str = "fedglioma: federated glioma MRI, external evaluation",
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
    synthetic = _is_synthetic(provenance) if synthetic is None else synthetic
    site = metrics.get("site")
    level = int(round(100 * float(metrics.get("level", 0.95))))
    sections: list[tuple[str, str, str]] = []
    not_applicable = metrics.get("not_applicable")

    head_note = (
        f'<p class="note">External site <b>{_e(site or "–")}</b>, never used for training, model '
        "selection or thresholds. AUC intervals: stratified percentile bootstrap "
        f"({_e(metrics.get('n_boot', '–'))} resamples, seed {_e(metrics.get('seed', '–'))}); n counts the "
        "subjects with that label (pos/neg).</p>"
    )
    if not_applicable:
        head_body = (
            f'<p class="note">External site <b>{_e(site or "–")}</b>: the federated model\'s external evaluation '
            f"is <b>not applicable</b>. {_e(not_applicable)}</p>"
        )
    else:
        head_body = head_note + _table(headline_table(metrics), extra_class="headline nowrap")
    sections.append(("headline", "Headline metrics", head_body))

    cohort_body = _table(cohort_table(cohort, qc_exclusions, qc_flagged))
    cohort_body += (
        '<p class="note">Prevalence is among subjects with a known label; missing labels are never '
        "imputed and those subjects are left out of that marker only.</p>"
    )
    sections.append(("cohort", "Cohort per site", cohort_body))

    if qc_images:
        qc_body = (
            '<div class="grid">'
            + "".join(_figure(path, f"site {s}", name=f"QC image of site {s}") for s, path in sorted(qc_images.items()))
            + "</div>"
        )
    else:
        qc_body = '<p class="muted">No QC overlays given.</p>'
    sections.append(("qc", "Quality control overlays", qc_body))

    sections.append(
        (
            "training",
            "Training curves",
            _figure(
                training_curves,
                "Loss, validation Dice and mean validation AUC per site and round",
                name="training curves",
            ),
        )
    )

    if not not_applicable:
        roc_body = _figure(
            figures.get("roc"), f"ROC curves per marker with {level}% bootstrap bands (external site)", name="roc"
        )
        roc_body += "<h3>Per-marker metrics at the training-site threshold</h3>" + _table(
            marker_table(metrics), extra_class="nowrap"
        )
        roc_body += (
            '<p class="note">Thresholds maximise Youden\'s J on the summed validation confusion counts of the '
            "training sites; the external site never influences them. Predicted positive when "
            "p ≥ threshold. Grade: grade 4 vs 2-3 scored by p(grade 4).</p>"
        )
        sections.append(("roc", "ROC curves", roc_body))

        sections.append(
            (
                "reliability",
                "Calibration",
                _figure(
                    figures.get("reliability"),
                    "Reliability curves (uniform bins; point area ∝ subjects in the bin) and Brier scores",
                    name="reliability",
                ),
            )
        )

        dice_body = _figure(figures.get("dice"), "Dice per subject (box: quartiles; points: subjects)", name="dice")
        dice_body += _table(segmentation_table(metrics))
        dice_body += (
            '<p class="note">Measured on each subject\'s native T1c grid against the site\'s own segmentation '
            "(the prediction mapped back and thresholded there); the network-grid values are secondary. An empty "
            "prediction counts with the BraTS HD95 penalty of 373.13 mm.</p>"
        )
        sections.append(("dice", "Segmentation: Dice distribution", dice_body))

        overlays = {k: v for k, v in figures.items() if k.startswith("overlay")}
        if overlays:
            ov_body = "".join(_figure(p, _overlay_caption(k), name=k) for k, p in overlays.items())
        else:
            ov_body = '<p class="muted">Best / median / worst overlays: not available.</p>'
        sections.append(("overlays", "Segmentation overlays: best, median, worst", ov_body))

    if comparison is not None and not comparison.empty:
        cmp_body = _table(_comparison_display(comparison), extra_class="nowrap")
        cmp_body += (
            '<p class="note">Values [interval: IQR or bootstrap CI]; n is shared by all models unless given per cell. '
            "↑/↓: higher/lower is better. Ratio: federated / centralized. p vs model: paired stratified bootstrap of "
            "the AUC difference federated − model on the same external subjects (two-sided).</p>"
        )
    else:
        cmp_body = '<p class="muted">No comparison given.</p>'
    sections.append(("comparison", "Federated vs centralized vs local-only", cmp_body))

    others = {k: v for k, v in figures.items() if k not in KNOWN_FIGURES and not k.startswith("overlay")}
    if others:
        sections.append(("figures", "Other figures", "".join(_figure(p, k, name=k) for k, p in others.items())))

    sections.append(("provenance", "Provenance", _provenance_html(provenance)))

    css = resources.files("fedglioma.report").joinpath("templates/report.css").read_text(encoding="utf-8")
    toc = "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t, _ in sections)
    banner = (
        f'<div class="banner" role="alert">{_e(SYNTHETIC_BANNER)} <span>This report was made from the '
        "built-in synthetic demo cohort.</span></div>"
        if synthetic
        else ""
    )
    sub = f"External site {_e(site)}" if site else "External evaluation"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{_e(title)}</title>
<script>{_SCRIPT}</script>
<style>
{css}
</style>
</head>
<body>
<header class="top"><h1>{_e(title)}</h1><p>{sub}</p></header>
{banner}
<nav class="toc">{toc}</nav>
<main>
{chr(10).join(_section(sid, t, body) for sid, t, body in sections)}
</main>
<footer>Generated by fedglioma. Self-contained: no network access needed.</footer>
</body>
</html>
"""
    write_text(out_html, page)
