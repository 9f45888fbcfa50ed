"""Subcommands ``synth`` (a whole demo cohort) and ``synth-site`` (one site, for the per-site rule)."""

from __future__ import annotations

import argparse

from fedglioma.errors import ConfigError


def parse_strengths(items: list[str] | None) -> dict[str, float]:
    """``["idh=0.5", ...]`` -> ``{"idh": 0.5}`` (names and ranges are checked by the generator)."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--strength expects NAME=VALUE, got {item!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise ConfigError(f"--strength {item!r}: {value!r} is not a number") from exc
    return out


def parse_transforms(items: list[str] | None) -> dict[str, str]:
    """``["SRI24=results/templates/SRI24_to_MNI152", ...]`` -> ``{"SRI24": ...}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--template-transform expects SPACE=PATH, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=2025, help="generator seed (same seed, byte-identical files)")
    p.add_argument(
        "--strength",
        action="append",
        metavar="NAME=VALUE",
        help="phenotype strength in [0, 1] (idh, codeletion, grade, mgmt, mass_effect); repeatable",
    )
    p.add_argument(
        "--template-transform",
        action="append",
        metavar="SPACE=PATH",
        help="template-to-template transform of a site space, e.g. SRI24=results/templates/SRI24_to_MNI152 "
        "(the template_transform rule's folder or its transform.mat; needed for SRI24 sites)",
    )


def _run_cohort(args: argparse.Namespace) -> int:
    from fedglioma.synth.cohort import generate_cohort

    generate_cohort(
        args.out,
        args.sites,
        args.subjects_per_site,
        args.seed,
        parse_strengths(args.strength),
        external_subjects=args.external_subjects,
        template_transforms=parse_transforms(args.template_transform),
    )
    return 0


def _run_site(args: argparse.Namespace) -> int:
    from fedglioma.synth.cohort import generate_demo_site

    generate_demo_site(
        args.out,
        args.site_index,
        args.n_sites,
        args.subjects,
        args.seed,
        parse_strengths(args.strength),
        template_transforms=parse_transforms(args.template_transform),
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and ``synth-site`` to the ``fedglioma`` command line."""
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic demo cohort (one folder per site, each in its dataset's layout)",
        description="Generate a synthetic multi-site glioma cohort into OUT/<site> (SiteA.., External). "
        "Synthetic data: for exercising the pipeline, not for clinical conclusions.",
    )
    _add_common(p)
    p.add_argument("--sites", type=int, default=6, help="number of sites (the last is the external site)")
    p.add_argument("--subjects-per-site", type=int, default=6, help="subjects per training site")
    p.add_argument("--external-subjects", type=int, default=None, help="subjects of the external site")
    p.set_defaults(func=_run_cohort)

    q = subparsers.add_parser(
        "synth-site",
        help="generate one site of the synthetic demo cohort into OUT",
        description="Generate site SITE_INDEX (0-based) of the N_SITES default demo sites into OUT.",
    )
    _add_common(q)
    q.add_argument("--site-index", type=int, required=True, help="0-based index of the site")
    q.add_argument("--n-sites", type=int, required=True, help="number of sites of the cohort")
    q.add_argument("--subjects", type=int, required=True, help="subjects of this site")
    q.set_defaults(func=_run_site)
