"""A tiny, fast configuration of the real workflow (demo cohort: 2 training sites + 1 external)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY_CONFIG = {
    "sites": "config/sites.tsv",
    "demo": {"enabled": True, "out": "results/demo", "subjects_per_site": 3, "external_subjects": 3, "seed": 7},
    "preprocess": {
        # the explicitly configured cheap mask keeps the test fast; HD-BET has its own test
        "skullstrip": {"method": "atlas"},
        "grid": {"grid_spacing": 6.0, "grid_shape": [24, 32, 24]},
        # short schedules: the tests check the plumbing, the unit tests and benchmarks the accuracy
        "coregister": {"iterations": [30, 10]},
        # every step after the atlas registration works on a 2 mm template grid (the network's is 6 mm)
        "atlas": {"iterations": [40, 20, 0], "resolution_mm": 2.0},
        "n4": {"shrink_factor": 8, "iterations": [10, 10]},
    },
    "model": {"width": 4, "depth": 2},
    "train": {"epochs_per_round": 1, "batch_size": 2, "val_fraction": 0.34},
    "federated": {"rounds": 2, "strategy": "fedavg"},
    "evaluation": {"n_bootstrap": 200},
}

SITES = [("A", "train"), ("B", "train"), ("X", "external")]


def write_tiny(work: Path, config: dict | None = None, sites: list[tuple[str, str]] | None = None,
               extra_columns: dict[str, dict[str, str]] | None = None) -> Path:
    """Write ``config/config.yaml`` and ``config/sites.tsv`` of a tiny demo run under ``work``."""
    from fedglioma.synth import default_site_specs, demo_clinical_mapping, demo_site_row

    cfg = dict(config or TINY_CONFIG)
    (work / "config").mkdir(parents=True, exist_ok=True)
    cols = ["site", "role", "layout", "path", "clinical", "tumour_labels", "skull_stripped", "coregistered", "space"]
    extra = sorted({k for v in (extra_columns or {}).values() for k in v})
    lines = ["\t".join(cols + extra)]
    out = cfg["demo"]["out"]
    sites = sites or SITES
    # site i is the generator's site i (its dataset layout, state and clinical table)
    specs = default_site_specs(len(sites), cfg["demo"]["seed"])
    mappings = {}
    for (site, role), spec in zip(sites, specs, strict=True):
        declared = demo_site_row(spec, site, out)
        row = [site, role, *(declared[c] for c in cols[2:])]
        row += [(extra_columns or {}).get(site, {}).get(k, "") for k in extra]
        lines.append("\t".join(row))
        mappings[site] = demo_clinical_mapping(spec)
    if "clinical" not in cfg:
        cfg["clinical"] = {"sites": mappings}
    (work / "config" / "sites.tsv").write_text("\n".join(lines) + "\n")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def snakemake(work: Path, *args: str, timeout: int = 1200,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the repository's Snakefile in ``work`` (environment ``env``, default this process's)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
