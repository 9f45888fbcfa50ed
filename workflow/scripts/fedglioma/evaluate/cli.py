"""Tool of ``fedglioma evaluate``: ``metrics``, site-aggregated metrics from per-subject tables (the workflow steps
``evaluate model`` and ``evaluate compare`` come from :mod:`fedglioma.registry`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedglioma.errors import ConfigError, InputError
from fedglioma.io.files import read_json, read_tsv
from fedglioma.settings import Endpoints, add_config_arguments, config_of, section


def load_thresholds(path: str | Path | None) -> dict[str, float | None]:
    """Thresholds JSON: ``{marker: threshold}`` or an object with such a mapping under ``"thresholds"`` (e.g.
    model selection's ``final.json``, whose entries are ``{"threshold": t, ...}`` and whose grade key is
    ``grade4``); see :func:`fedglioma.evaluate.site.normalise_thresholds`."""
    from fedglioma.evaluate.site import normalise_thresholds

    if path is None:
        return {}
    obj = read_json(path, what="thresholds file")
    if isinstance(obj, dict) and isinstance(obj.get("thresholds"), dict):
        obj = obj["thresholds"]
    if not isinstance(obj, dict):
        raise InputError("thresholds file must hold an object marker -> threshold", file=path)
    try:
        return normalise_thresholds(obj)
    except ConfigError as exc:
        raise InputError(str(exc), file=path) from exc


def _metrics(args: argparse.Namespace) -> int:
    from fedglioma.atomic import write_json
    from fedglioma.evaluate.figures import write_site_figures
    from fedglioma.evaluate.site import summarise_site

    config = config_of(args)

    predictions = read_tsv(args.predictions, what="predictions table")
    labels = read_tsv(args.labels, what="labels table")
    seg = read_tsv(args.seg, what="segmentation table") if args.seg else None
    summary = summarise_site(
        predictions,
        labels,
        seg,
        load_thresholds(args.thresholds),
        n_boot=int(config["evaluation"]["n_bootstrap"]),
        seed=int(config["evaluation"]["seed"]),
        n_bins=args.n_bins,
        site=args.site,
        endpoints=section(Endpoints, config["endpoints"], "endpoints"),
    )
    write_json(args.out, summary)
    if args.figures:
        write_site_figures(summary, seg, args.figures, title=f"external site {args.site}" if args.site else None)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``metrics`` to the ``evaluate`` stage."""
    p = subparsers.add_parser(
        "metrics",
        help="site-aggregated metrics (JSON) and figures from per-subject predictions, labels and segmentation rows",
        description="Run inside the evaluated site's scope. Writes only aggregates (AUCs with stratified bootstrap "
        "CIs, thresholded rates, Brier, reliability, ROC with bands, Dice/HD95/volume summaries).",
    )
    p.add_argument(
        "--predictions", required=True, help="TSV: subject, p_idh, p_codeletion, p_mgmt, p_grade2, p_grade3, p_grade4"
    )
    p.add_argument(
        "--labels", required=True, help="labels TSV: subject, idh, codeletion, mgmt, grade (empty = missing)"
    )
    p.add_argument("--seg", default=None, help="segmentation TSV: subject, dice, hd95, volume_diff_ml [, hd95_reason]")
    p.add_argument(
        "--thresholds",
        default=None,
        help="JSON marker -> threshold chosen on the training sites (or an object with 'thresholds')",
    )
    p.add_argument("--out", required=True, help="output metrics JSON")
    p.add_argument("--figures", default=None, help="folder for roc.png, reliability.png, dice.png")
    p.add_argument("--site", default=None, help="site ID (named in the output and in errors)")
    p.add_argument("--n-bins", type=int, default=10, help="reliability bins (default: %(default)s)")
    add_config_arguments(p)  # evaluation.n_bootstrap and .seed, endpoints
    p.set_defaults(func=_metrics)
