"""Subcommands of :mod:`fedglioma.evaluate`: ``metrics``, ``compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedglioma.errors import ConfigError, InputError
from fedglioma.io.files import parse_pairs, read_json, read_tsv
from fedglioma.settings import Config, add_config_argument, load_config


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


def _n_boot(args: argparse.Namespace, cfg: Config) -> int:
    """``--n-boot``, else the config's ``evaluation.n_bootstrap``."""
    return cfg.evaluation.n_bootstrap if args.n_boot is None else int(args.n_boot)


def _seed(args: argparse.Namespace, cfg: Config) -> int:
    """``--seed``, else the config's ``evaluation.seed``."""
    return cfg.evaluation.seed if args.seed is None else int(args.seed)


def _metrics(args: argparse.Namespace) -> int:
    from fedglioma.atomic import write_json
    from fedglioma.evaluate.figures import write_site_figures
    from fedglioma.evaluate.site import summarise_site

    predictions = read_tsv(args.predictions, what="predictions table")
    labels = read_tsv(args.labels, what="labels table")
    seg = read_tsv(args.seg, what="segmentation table") if args.seg else None
    cfg = load_config(args.config)
    summary = summarise_site(
        predictions,
        labels,
        seg,
        load_thresholds(args.thresholds),
        n_boot=_n_boot(args, cfg),
        seed=_seed(args, cfg),
        n_bins=args.n_bins,
        site=args.site,
        endpoints=cfg.endpoints,
    )
    write_json(args.out, summary)
    if args.figures:
        write_site_figures(summary, seg, args.figures, title=f"external site {args.site}" if args.site else None)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from fedglioma.evaluate.compare import compare_models

    metrics = {
        m: read_json(p, what=f"metrics of model {m}") for m, p in parse_pairs(args.metrics, flag="--metrics").items()
    }
    preds = {
        m: read_tsv(p, what=f"predictions of model {m}")
        for m, p in parse_pairs(args.predictions, flag="--predictions").items()
    }
    labels = read_tsv(args.labels, what="labels table") if args.labels else None
    if preds and labels is None:
        raise ConfigError("--predictions needs --labels for the paired bootstrap")
    cfg = load_config(args.config)
    compare_models(
        metrics,
        predictions=preds or None,
        labels=labels,
        reference=args.reference,
        baseline=args.baseline,
        n_boot=_n_boot(args, cfg),
        seed=_seed(args, cfg),
        out_tsv=args.out,
        site=args.site,
        endpoints=cfg.endpoints,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``metrics`` and ``compare`` to the ``fedglioma`` command."""
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
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: evaluation.n_bootstrap)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: evaluation.seed)")
    p.add_argument("--n-bins", type=int, default=10, help="reliability bins (default: %(default)s)")
    add_config_argument(p, "endpoints: and evaluation: sections")
    p.set_defaults(func=_metrics)

    p = subparsers.add_parser(
        "compare",
        help="federated vs centralized vs local-only table with ratios and paired bootstrap p-values (TSV)",
        description="Metrics JSONs give the table; per-subject predictions of each model on the external site "
        "(with its labels) give paired bootstrap p-values of the AUC differences. Run it in the external site's "
        "scope when predictions are passed.",
    )
    p.add_argument(
        "--metrics",
        action="append",
        required=True,
        metavar="MODEL=JSON",
        help="a model's metrics JSON (repeatable; models federated, centralized, local-<site>)",
    )
    p.add_argument(
        "--predictions",
        action="append",
        metavar="MODEL=TSV",
        help="a model's predictions TSV on the external site (repeatable)",
    )
    p.add_argument("--labels", default=None, help="the external site's labels TSV (needed with --predictions)")
    p.add_argument("--reference", default="federated", help="model tested against the others (default: %(default)s)")
    p.add_argument("--baseline", default="centralized", help="denominator of the ratio (default: %(default)s)")
    p.add_argument("--out", required=True, help="output TSV")
    p.add_argument("--site", default=None)
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: evaluation.n_bootstrap)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: evaluation.seed)")
    add_config_argument(p, "endpoints: and evaluation: sections")
    p.set_defaults(func=_compare)
