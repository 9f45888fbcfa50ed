"""Tool of ``fedglioma cohort``: ``check-inputs`` (the harmonised labels are the workflow step ``cohort labels``)."""

from __future__ import annotations

import argparse

from fedglioma.settings import add_config_arguments, config_of


def _check_inputs(args: argparse.Namespace) -> int:
    from fedglioma.check import check_site, site_summary, summary_table
    from fedglioma.config import layout_options, load_sites

    config = config_of(args)
    rows = load_sites(args.sites or config["sites"])
    if args.site:
        rows = [r for r in rows if r.site in set(args.site)]
    checks = [
        check_site(r, config["clinical"], read_voxels=not args.quick,
                   layout_options=layout_options(r, config["layouts"]),
                   max_image_mb=config["inputs"]["max_image_mb"])
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check-inputs",
        help="validate sites.tsv, every site's images and clinical table; list every problem",
        description="Validate the input contract without running anything: print a table of sites, subjects, "
        "modalities found and labels available; exit 1 listing every problem.",
    )
    p.add_argument("--sites", default=None, help="sites table (default: the config's `sites`)")
    add_config_arguments(p)
    p.add_argument("--site", action="append", help="check only this site (repeatable)")
    p.add_argument("--quick", action="store_true", help="read headers only, not the voxel data")
    p.set_defaults(func=_check_inputs)
