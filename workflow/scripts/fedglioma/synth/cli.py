"""Tool of ``fedglioma cohort``: ``synth``, the whole demo cohort (one site is the workflow step ``synth-site``)."""

from __future__ import annotations

import argparse

from fedglioma.errors import ConfigError
from fedglioma.settings import add_config_arguments, config_of


def parse_transforms(items: list[str] | None) -> dict[str, str]:
    """``["SRI24=results/templates/SRI24_to_MNI152", ...]`` -> ``{"SRI24": ...}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--template-transform expects SPACE=PATH, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _run_cohort(args: argparse.Namespace) -> int:
    from fedglioma.config import load_sites
    from fedglioma.synth.cohort import generate_cohort

    config = config_of(args)
    demo = config["demo"]
    n_sites = args.n_sites or len(load_sites(config["sites"]))
    generate_cohort(
        args.out or demo["out"],
        n_sites,
        int(demo["subjects_per_site"]),
        int(demo["seed"]),
        dict(demo.get("strengths") or {}),
        external_subjects=int(demo["external_subjects"]),
        template_transforms=parse_transforms(args.template_transform),
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` (the whole demo cohort) to the ``cohort`` stage (one site: ``cohort synth-site``)."""
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic demo cohort the config describes (one folder per site, in its dataset's layout)",
        description="Generate a synthetic multi-site glioma cohort into OUT/<site> (SiteA.., External) with the "
        "config's demo section (seed, subjects, strengths). Synthetic data: for exercising the pipeline, not for "
        "clinical conclusions.",
    )
    add_config_arguments(p)
    p.add_argument("--out", default=None, help="output folder (default: the config's demo.out)")
    p.add_argument("--n-sites", type=int, default=None,
                   help="number of sites, the last external (default: the rows of the config's sites table)")
    p.add_argument(
        "--template-transform",
        action="append",
        metavar="SPACE=PATH",
        help="template-to-template transform of a site space, e.g. SRI24=results/templates/SRI24_to_MNI152 "
        "(a `fedglioma preprocess template-transform` folder or its transform.mat; needed for SRI24 sites)",
    )
    p.set_defaults(func=_run_cohort)
