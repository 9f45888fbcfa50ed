"""Subcommands of :mod:`fedglioma.io`: ``check-inputs`` and ``labels``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedglioma.config import load_sites
from fedglioma.settings import add_config_argument, load_config


def _check_inputs(args: argparse.Namespace) -> int:
    from fedglioma.io.check import check_site, site_summary, summary_table

    config = load_config(args.config)
    rows = load_sites(args.sites)
    if args.site:
        rows = [r for r in rows if r.site in set(args.site)]
    layout_opts = {"nnunet": {"channels": tuple(config.layouts.nnunet.channels)}}
    checks = [
        check_site(r, config.clinical.model_dump(mode="json"), read_voxels=not args.quick,
                   layout_options=layout_opts.get(r.layout, {}))
        for r in rows
    ]
    table = summary_table(checks)
    with_pd_opts = table.to_string(index=False) if not table.empty else "(no usable subjects)"
    print(with_pd_opts)
    print()
    print(site_summary(table).to_string(index=False))
    problems = [p for c in checks for p in c.problems]
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nall inputs OK")
    return 0


def _labels(args: argparse.Namespace) -> int:
    from fedglioma.io.clinical import write_site_labels

    config = load_config(args.config)
    rows = {r.site: r for r in load_sites(args.sites)}
    write_site_labels(rows[args.site], config.clinical.model_dump(mode="json"), Path(args.out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check-inputs",
        help="validate sites.tsv, every site's images and clinical table; list every problem",
        description="Validate the input contract without running anything: print a table of sites, subjects, "
        "modalities found and labels available; exit 1 listing every problem.",
    )
    p.add_argument("--sites", default="config/sites.tsv", help="sites table (default: %(default)s)")
    add_config_argument(p, "clinical: mappings and layouts: options")
    p.add_argument("--site", action="append", help="check only this site (repeatable)")
    p.add_argument("--quick", action="store_true", help="read headers only, not the voxel data")
    p.set_defaults(func=_check_inputs)

    p = subparsers.add_parser("labels", help="harmonise one site's clinical table into labels.tsv")
    p.add_argument("--sites", default="config/sites.tsv")
    add_config_argument(p, "clinical: mappings")
    p.add_argument("--site", required=True)
    p.add_argument("--out", required=True, help="output labels.tsv")
    p.set_defaults(func=_labels)
