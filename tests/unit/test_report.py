"""Tests of fedglioma.report: the standalone HTML report, headline text, training curves, CLI, and (slow) a real
headless-Chromium render."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedglioma.evaluate.compare import comparison_table
from fedglioma.evaluate.figures import dice_figure, new_figure, save_png
from fedglioma.evaluate.site import summarise_site
from fedglioma.io.clinical import cohort_summary
from fedglioma.report.cohort import cohort_table
from fedglioma.report.figures import training_curves
from fedglioma.report.html import SYNTHETIC_BANNER, build_report, headline_table, headline_text, render_report
from tests.browser import CHROMIUM, check_page

SECTIONS = (
    "headline",
    "cohort",
    "qc",
    "training",
    "roc",
    "reliability",
    "dice",
    "overlays",
    "comparison",
    "provenance",
)
PNG = b"\x89PNG\r\n\x1a\n"


def cohort_summaries(table: pd.DataFrame) -> list[dict]:
    """The sites' summary.json contents (rule labels) from a per-subject cohort table."""
    numeric = table.assign(**{t: pd.to_numeric(table[t], errors="coerce") for t in ("idh", "codeletion", "mgmt",
                                                                                   "grade")})
    return [cohort_summary(g, site=str(site), role=", ".join(sorted(g["role"].dropna().astype(str).unique()))
                           if "role" in g.columns else None)
            for site, g in numeric.groupby("site", sort=False)]


def _png(path: Path, colour: str = "C0") -> Path:
    fig = new_figure(2.0, 1.5)
    ax = fig.subplots()
    ax.plot([0, 1, 2], [0, 1, 0], color=colour)
    return save_png(fig, path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    n = 30
    subj = [f"E{i:02d}" for i in range(n)]
    idh = rng.integers(0, 2, n).astype(float)
    idh[:3] = np.nan
    labels = pd.DataFrame(
        {
            "subject": subj,
            "idh": idh,
            "codeletion": rng.integers(0, 2, n).astype(float),
            "mgmt": np.ones(n),
            "grade": rng.choice([2.0, 3.0, 4.0], n),
        }
    )
    g = rng.random((n, 3))
    g /= g.sum(axis=1, keepdims=True)
    preds = pd.DataFrame(
        {
            "subject": subj,
            "p_idh": np.clip(0.4 * np.nan_to_num(idh) + 0.6 * rng.random(n), 0, 1),
            "p_codeletion": rng.random(n),
            "p_mgmt": rng.random(n),
            "p_grade2": g[:, 0],
            "p_grade3": g[:, 1],
            "p_grade4": g[:, 2],
        }
    )
    seg = pd.DataFrame(
        {
            "subject": subj,
            "dice": rng.uniform(0.6, 0.95, n),
            "hd95": rng.gamma(2, 2, n),
            "volume_diff_ml": rng.normal(0, 2, n),
        }
    )
    metrics = summarise_site(preds, labels, seg, {"idh": 0.5}, n_boot=1000, seed=0, site="External")
    cohort = pd.concat(
        [
            labels.assign(site="External", role="external"),
            pd.DataFrame(
                {
                    "site": "SiteA",
                    "role": "train",
                    "subject": ["A1", "A2", "A3", "A4"],
                    "idh": [1, 0, np.nan, 1],
                    "codeletion": [1, 0, 0, np.nan],
                    "mgmt": [1, 1, 0, 0],
                    "grade": [2, 4, 4, 3],
                }
            ),
        ],
        ignore_index=True,
    )
    qc_ex = pd.DataFrame(
        {
            "site": ["SiteA", "SiteA", "External"],
            "subject": ["A9", "A8", "E99"],
            "reason": ["motion", "motion", "missing FLAIR"],
        }
    )
    rows = pd.DataFrame(
        [
            {
                "round": r,
                "site": s,
                "train_loss": 1 / r,
                "val_loss": 1.1 / r,
                "val_dice": 0.5 + 0.05 * r,
                "val_auc_mean": np.nan if r == 1 else 0.6 + 0.02 * r,
            }
            for r in range(1, 5)
            for s in ("SiteA", "SiteB")
        ]
    )
    figures = {
        "roc": _png(d / "roc.png"),
        "reliability": _png(d / "rel.png", "C1"),
        "dice": dice_figure(seg["dice"], d / "dice.png"),
        "overlays": _png(d / "ov.png", "C2"),
        "calibration_extra": _png(d / "extra.png", "C3"),
    }
    return {
        "dir": d,
        "metrics": metrics,
        "cohort": cohort,
        "qc_ex": qc_ex,
        "rows": rows,
        "figures": figures,
        "qc_images": {"SiteA": _png(d / "qcA.png", "C4"), "External": _png(d / "qcE.png", "C5")},
        "training": training_curves(rows, d / "training.png"),
        "comparison": comparison_table({"federated": metrics, "centralized": metrics}),
        "provenance": {
            "synthetic": True,
            "git_commit": "0123abc",
            "model_sha256": "ab" * 32,
            "packages": {"numpy": np.__version__, "pandas": pd.__version__},
            "config": {"demo": {"enabled": True, "seed": 2025}, "evaluation": {"n_boot": 1000}},
        },
    }


def _build(inputs: dict, out: Path, **overrides) -> str:
    kwargs = {
        "cohort": cohort_summaries(inputs["cohort"]),
        "qc_exclusions": inputs["qc_ex"],
        "qc_images": inputs["qc_images"],
        "training_curves": inputs["training"],
        "metrics": inputs["metrics"],
        "comparison": inputs["comparison"],
        "figures": inputs["figures"],
        "provenance": inputs["provenance"],
    }
    kwargs.update(overrides)
    build_report(out, **kwargs)
    return out.read_text()


def test_report_has_every_section_and_only_data_uri_pngs(inputs: dict, tmp_path: Path) -> None:
    page = _build(inputs, tmp_path / "index.html")
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert '<section id="figures">' in page  # the extra figure gets its own section
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == 2 + 1 + 5  # QC x2, training, roc/reliability/dice/overlays/extra
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == PNG
    # nothing external: no links to other resources, and a CSP that forbids any network request
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "default-src 'none'" in page
    assert SYNTHETIC_BANNER in page
    for text in ("0123abc", "ab" * 32, "numpy", "motion (2)", "missing FLAIR (1)", "only one class"):
        assert text in page, text


def test_report_without_optional_parts(inputs: dict, tmp_path: Path) -> None:
    page = _build(
        inputs,
        tmp_path / "index.html",
        qc_images={},
        training_curves=None,
        comparison=None,
        figures={},
        provenance={"git_commit": "x"},
    )
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "<img" not in page
    assert SYNTHETIC_BANNER not in page
    assert "No comparison given" in page


VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}
HOSTILE = "<script>alert('x')</script> & \"q\""


class _Page(HTMLParser):
    """Start tags, visible text and nesting problems of a page (every non-void element must close in order)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.problems: list[str] = []
        self._open: list[str] = []
        self.feed(page)
        self.close()
        self.problems += [f"<{t}> never closed" for t in self._open]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self._open[-1] if self._open else None}>")
        else:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_escapes_caller_text_and_is_well_formed(inputs: dict, tmp_path: Path) -> None:
    """Autoescaping: a site name, exclusion reason, figure name, provenance entry and title holding markup are
    shown as text, never as elements; subject IDs never reach the page (counts only). The page parses with every
    element closed in order, one section per table-of-contents entry, each with its heading."""
    cohort = inputs["cohort"].assign(site=inputs["cohort"]["site"].replace({"SiteA": HOSTILE}),
                                     subject=inputs["cohort"]["subject"].replace({"A1": "<script>SUBJ-A1</script>"}))
    qc_ex = inputs["qc_ex"].assign(site=inputs["qc_ex"]["site"].replace({"SiteA": HOSTILE}), reason=HOSTILE)
    page = _build(
        inputs,
        tmp_path / "index.html",
        cohort=cohort_summaries(cohort),
        qc_exclusions=qc_ex,
        metrics={**inputs["metrics"], "site": HOSTILE},
        qc_images={HOSTILE: inputs["qc_images"]["SiteA"]},
        figures={**inputs["figures"], HOSTILE: inputs["figures"]["roc"]},
        provenance={**inputs["provenance"], "git_commit": HOSTILE, "config": HOSTILE},
        title=HOSTILE,
    )
    parsed = _Page(page)
    assert not parsed.problems
    assert [t for t, _ in parsed.tags].count("script") == 1  # the report's own script only
    assert "alert" not in re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    text = "".join(parsed.text)
    assert text.count(HOSTILE) >= 8  # title x2, subtitle, headline note, cohort row, reasons, QC, figure, provenance
    assert f"{HOSTILE} (2)" in text  # the exclusion reason with its count
    assert "SUBJ-A1" not in page  # no subject ID, harmless or not
    sections = [a["id"] for t, a in parsed.tags if t == "section"]
    assert sections == [a["href"].removeprefix("#") for t, a in parsed.tags if t == "a"]
    assert sections == [*SECTIONS[:-1], "figures", "provenance"]
    assert len([t for t, _ in parsed.tags if t == "h2"]) == len(sections)
    alts = [a["alt"] for t, a in parsed.tags if t == "img"]
    assert f"site {HOSTILE}" in alts and HOSTILE in alts  # attributes are escaped too


def test_template_refuses_an_incomplete_context() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render_report({"title": "t"})


def test_report_missing_image_names_it(inputs: dict, tmp_path: Path) -> None:
    from fedglioma.errors import InputError

    with pytest.raises(InputError, match="roc: image not found"):
        _build(inputs, tmp_path / "index.html", figures={"roc": tmp_path / "nope.png"})
    assert not (tmp_path / "index.html").exists()


def test_headline_table_and_text(inputs: dict) -> None:
    m = inputs["metrics"]
    table = headline_table(m)
    assert table["Metric"].tolist()[:6] == [
        "Dice, whole tumour (median)",
        "AUC IDH",
        "AUC 1p/19q (within IDH-mutant)",
        "AUC 1p/19q (all subjects with a label; secondary)",
        "AUC MGMT",
        "AUC Grade 4 vs 2-3",
    ]
    primary, secondary = (table.set_index("Metric").loc[k, "n"] for k in (
        "AUC 1p/19q (within IDH-mutant)", "AUC 1p/19q (all subjects with a label; secondary)"))
    assert int(primary.split()[0]) < int(secondary.split()[0])  # both shown, each with its own n
    idh = table.set_index("Metric").loc["AUC IDH"]
    assert idh["Estimate"] == f"{m['markers']['idh']['auc']:.3f}"
    assert idh["n"].startswith("27 (")
    assert table.set_index("Metric").loc["AUC MGMT", "Estimate"] == "not estimable"
    text = headline_text(m, synthetic=True)
    assert "External" in text and SYNTHETIC_BANNER in text and f"{m['segmentation']['dice']['median']:.3f}" in text


def test_cohort_table_counts(inputs: dict) -> None:
    t = cohort_table(cohort_summaries(inputs["cohort"]), inputs["qc_ex"]).set_index("Site")
    assert t.loc["SiteA", "Role"] == "train" and t.loc["SiteA", "Subjects"] == 4
    assert t.loc["SiteA", "IDH mutant"] == "2/3 (67%), 1 missing"
    assert t.loc["SiteA", "Grade (n per grade)"] == "2: 1 · 3: 1 · 4: 2"
    assert t.loc["SiteA", "QC excluded"] == 2 and t.loc["SiteA", "Exclusion reasons"] == "motion (2)"
    assert t.loc["External", "IDH mutant"].endswith("3 missing")
    assert "QC flagged" not in t.columns


def test_cohort_table_from_site_summaries(inputs: dict) -> None:
    """The workflow's path: one summary per site (summary.json), QC flags and exclusions; the same table as from
    the subjects. A site whose subjects were all excluded still gets a row; a broken summary is named."""
    summaries = cohort_summaries(inputs["cohort"])
    qc_ex = pd.concat([inputs["qc_ex"], pd.DataFrame({"site": ["SiteC"], "subject": ["C1"], "reason": [None]})])
    t = cohort_table(summaries, qc_ex, {"SiteA": 3, "External": 1}).set_index("Site")
    assert t.loc["SiteA", "QC flagged"] == 3 and t.loc["SiteC", "QC flagged"] == 0
    assert t.loc["SiteC", "Subjects"] == 0 and t.loc["SiteC", "Exclusion reasons"] == "unspecified (1)"
    without_role = cohort_table(cohort_summaries(inputs["cohort"].drop(columns="role")))
    assert "Role" not in without_role.columns and without_role["QC excluded"].tolist() == [0, 0]
    from fedglioma.errors import InputError

    with pytest.raises(InputError, match="cohort summary of site SiteA lacks grade_n"):
        cohort_table([{k: v for k, v in summaries[1].items() if k != "grade_n"}])


def test_training_curves_png_with_nan(inputs: dict) -> None:
    p = inputs["training"]
    assert p.read_bytes()[:8] == PNG and p.stat().st_size < 200_000
    from fedglioma.errors import InputError

    with pytest.raises(InputError, match="lacks columns"):
        training_curves(inputs["rows"].drop(columns="val_dice"), inputs["dir"] / "bad.png")


def test_headline_cli(inputs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedglioma report headline` prints the headline table (the report itself is the workflow step
    `report html`, tested with every other step in tests/unit/test_registry.py and the integration workflow)."""
    from fedglioma.cli import main

    (tmp_path / "m.json").write_text(json.dumps(inputs["metrics"]))
    assert main(["report", "headline", "--metrics", str(tmp_path / "m.json")]) == 0
    assert "Dice, whole tumour (median)" in capsys.readouterr().out


def test_report_rule_formats_the_site_summaries(inputs: dict, tmp_path: Path) -> None:
    """The workflow's report step (rule report, `fedglioma report html`): the cohort table comes from each site's
    summary.json and QC summary, formatted like the per-subject one, with the QC flags."""
    from fedglioma.atomic import write_json
    from fedglioma.io.clinical import cohort_summary
    from fedglioma.report.steps import write_report

    sites = ["External", "SiteA"]
    groups = dict(tuple(inputs["cohort"].groupby("site")))
    for site, role in zip(sites, ["external", "train"], strict=True):
        write_json(tmp_path / f"{site}_summary.json", cohort_summary(groups[site], site=site, role=role))
        excluded = [{"subject": "A9", "reasons": "motion"}] if site == "SiteA" else []
        write_json(tmp_path / f"{site}_qc.json", {"site": site, "n_flagged": 2 if site == "SiteA" else 0,
                                                  "exclusions": excluded})
    write_json(tmp_path / "metrics.json", inputs["metrics"])
    (tmp_path / "figures").mkdir()
    write_report(metrics=[str(tmp_path / "metrics.json")], figures=[str(tmp_path / "figures")],
                 cohort=[str(tmp_path / f"{s}_summary.json") for s in sites],
                 qc=[str(tmp_path / f"{s}_qc.json") for s in sites],
                 qc_examples=[str(inputs["qc_images"][s]) for s in sites], curves=str(inputs["training"]),
                 html=str(tmp_path / "index.html"), headline=str(tmp_path / "headline.json"),
                 config={"demo": {"enabled": True}}, external="External", sites=sites, models=["federated"])
    page = (tmp_path / "index.html").read_text()
    cohort = re.search(r'<section id="cohort">.*?</section>', page, re.S).group(0)
    heads = re.findall(r"<th>([^<]*)</th>", cohort)
    assert heads == ["Site", "Role", "Subjects", "IDH mutant", "1p/19q codeleted", "MGMT methylated",
                     "Grade (n per grade)", "QC flagged", "QC excluded", "Exclusion reasons"]
    cells = re.findall(r"<td>([^<]*)</td>", cohort)
    assert cells[10:] == ["SiteA", "train", "4", "2/3 (67%), 1 missing", "1/3 (33%), 1 missing", "2/4 (50%)",
                          "2: 1 · 3: 1 · 4: 2", "2", "1", "motion (1)"]


# ------------------------------------------------------------------------------------------ real browser

@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(inputs: dict, tmp_path: Path) -> None:
    """Open the report in headless Chromium: every image decodes, no script error or console message, and the
    screenshot is not blank."""
    _build(inputs, tmp_path / "index.html")
    check_page(tmp_path / "index.html", tmp_path)


def test_report_says_when_the_federated_model_has_no_external_result(inputs: dict, tmp_path: Path) -> None:
    """FedBN: the report states why the federation is not evaluated externally instead of showing a model that
    was never validated; the comparison of the baselines still shows."""
    from fedglioma.report.steps import FEDBN_NOT_APPLICABLE

    metrics = {"site": "External", "not_applicable": FEDBN_NOT_APPLICABLE}
    page = _build({**inputs, "metrics": metrics}, tmp_path / "index.html")
    assert "not applicable" in page and "site_local_patterns" in page
    assert '<section id="roc">' not in page and '<section id="comparison">' in page
    text = headline_text(metrics)
    assert "not applicable" in text and "FedBN" in text


def test_privacy_in_curves_and_report(tmp_path: Path) -> None:
    """Under DP the training-curve table carries each site's spent epsilon per round, and the report's privacy
    table each site's (epsilon, delta) after its last round; without DP there is no such table."""
    from fedglioma.report.curves import curves_table
    from fedglioma.report.steps import privacy_table

    sidecars, metrics = [], []
    for site in ("A", "B"):
        for rnd in (1, 2):
            priv = None if site == "B" else {"epsilon": 0.5 * rnd, "delta": 0.01, "noise_multiplier": 1.2,
                                             "max_grad_norm": 1.0, "sample_rate": 0.5, "steps": 2 * rnd,
                                             "accountant": "rdp"}
            p = tmp_path / f"u-{site}-{rnd}.json"
            p.write_text(json.dumps({"site": site, "round": rnd, "n_train": 4, "train_losses": None, "privacy": priv}))
            sidecars.append(str(p))
            v = tmp_path / f"v-{site}-{rnd}.json"
            v.write_text(json.dumps({"site": site, "round": rnd, "metrics": {"loss": 1.0, "dice_mean": 0.5}}))
            metrics.append(str(v))
    t = curves_table(sidecars, metrics)
    assert t[t.site == "A"]["epsilon"].tolist() == [0.5, 1.0] and t[t.site == "B"]["epsilon"].isna().all()
    assert t["train_loss"].isna().all()
    priv = privacy_table(t)
    assert priv is not None and priv.to_dict("records") == [
        {"site": "A", "rounds": 2, "ε": "1", "δ": "0.01", "noise multiplier": "1.2", "accountant": "rdp"}]
    assert privacy_table(t.assign(epsilon=np.nan)) is None
