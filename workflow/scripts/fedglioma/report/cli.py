"""Subcommands of :mod:`fedglioma.report`: ``report``, ``headline`` and ``training-curves``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedglioma.io.files import parse_pairs, read_json, read_tsv


def _report(args: argparse.Namespace) -> int:
    from fedglioma.report.cohort import cohort_summaries
    from fedglioma.report.figures import training_curves
    from fedglioma.report.html import build_report, headline_text

    out = Path(args.out)
    curves = Path(args.training_curves) if args.training_curves else None
    if args.training_rows:
        curves = training_curves(
            read_tsv(args.training_rows, what="training-curve table"), out.parent / "training_curves.png"
        )
    metrics = read_json(args.metrics, what="external-site metrics")
    provenance = read_json(args.provenance, what="provenance") if args.provenance else {}
    qc_ex = (
        read_tsv(args.qc_exclusions, what="QC exclusion table")
        if args.qc_exclusions
        else pd.DataFrame(columns=["site", "subject", "reason"])
    )
    build_report(
        out,
        cohort=cohort_summaries(read_tsv(args.cohort, what="cohort table")),
        qc_exclusions=qc_ex,
        qc_images=parse_pairs(args.qc_image, flag="--qc-image"),
        training_curves=curves,
        metrics=metrics,
        comparison=read_tsv(args.comparison, what="comparison table") if args.comparison else None,
        figures=parse_pairs(args.figure, flag="--figure"),
        provenance=provenance,
        synthetic=args.synthetic,
    )
    if args.print_headline:
        synthetic = args.synthetic if args.synthetic is not None else bool(provenance.get("synthetic", False))
        print(headline_text(metrics, synthetic=synthetic), end="")
    return 0


def _headline(args: argparse.Namespace) -> int:
    from fedglioma.report.html import headline_text

    print(headline_text(read_json(args.metrics, what="external-site metrics"), synthetic=args.synthetic), end="")
    return 0


def _training_curves(args: argparse.Namespace) -> int:
    from fedglioma.report.figures import training_curves

    training_curves(read_tsv(args.rows, what="training-curve table"), args.out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report``, ``headline`` and ``training-curves`` to the ``fedglioma`` command."""
    p = subparsers.add_parser(
        "report",
        help="write the standalone HTML report (figures embedded, no network needed)",
        description="Every input is a path; figures are embedded as base64 data URIs.",
    )
    p.add_argument("--out", required=True, help="output index.html")
    p.add_argument("--metrics", required=True, help="external site's metrics JSON (fedglioma metrics)")
    p.add_argument(
        "--cohort",
        required=True,
        help="cohort TSV: site, subject, idh, codeletion, mgmt, grade [, role]; or one row per site with the fields "
        "of results/sites/{site}/summary.json",
    )
    p.add_argument("--qc-exclusions", default=None, help="TSV: site, subject, reason")
    p.add_argument("--qc-image", action="append", metavar="SITE=PNG", help="QC overlay of a site (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--training-curves", default=None, metavar="PNG", help="training-curve figure")
    g.add_argument(
        "--training-rows",
        default=None,
        metavar="TSV",
        help="round, site, train_loss, val_loss, val_dice, val_auc_mean: the figure is drawn next to --out",
    )
    p.add_argument("--comparison", default=None, help="comparison TSV (fedglioma compare)")
    p.add_argument(
        "--figure",
        action="append",
        metavar="NAME=PNG",
        help="figure by name: roc, reliability, dice, overlays (or overlay_*), others (repeatable)",
    )
    p.add_argument(
        "--provenance",
        default=None,
        help="JSON: config, packages {name: version}, git_commit, model_sha256, synthetic, ...",
    )
    s = p.add_mutually_exclusive_group()
    s.add_argument(
        "--synthetic",
        dest="synthetic",
        action="store_const",
        const=True,
        default=None,
        help="show the synthetic-data banner (default: from provenance)",
    )
    s.add_argument("--no-synthetic", dest="synthetic", action="store_const", const=False)
    p.add_argument("--print-headline", action="store_true", help="also print the headline metrics table")
    p.set_defaults(func=_report)

    p = subparsers.add_parser("headline", help="print the external site's headline metrics as a text table")
    p.add_argument("--metrics", required=True, help="external site's metrics JSON")
    p.add_argument("--synthetic", action="store_true", help="add the synthetic-data warning")
    p.set_defaults(func=_headline)

    p = subparsers.add_parser("training-curves", help="plot training curves per site and round (PNG)")
    p.add_argument("--rows", required=True, help="TSV: round, site, train_loss, val_loss, val_dice, val_auc_mean")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=_training_curves)
