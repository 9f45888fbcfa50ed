"""Every kind of site the paper's data come in, through the real rules, to training files and QC.

The demo generator writes its six sites as the public data sets arrive (see docs/synth.md): BraTS 2021 and
BraTS 2023 and UPENN-GBM skull-stripped in SRI24 (240x240x155, 1 mm), UCSF-PDGM skull-stripped and
co-registered in its own grid, EGD skull-stripped in MNI152 (the network's template), and a raw hospital
export with skull, each sequence on its own thick-slice grid. One subject per site, through Snakemake;
what each site declared must show as skipped steps in state.json and in the QC table, and
``fedglioma cohort check-inputs`` must accept every site.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from fedglioma.synth import default_site_specs, site_subject_ids
from tests.integration.tiny import BIN, TINY_CONFIG, snakemake, write_tiny

pytestmark = pytest.mark.slow

SITES = [("BraTS21", "train"), ("BraTS23", "train"), ("UCSF", "train"), ("UPENN", "train"), ("EGD", "train"),
         ("Hospital", "external")]
#: site -> (steps skipped, register_atlas's template transform or None)
EXPECTED = {
    "BraTS21": ({"coregister", "skullstrip", "register_atlas"}, "SRI24_to_MNI152"),
    "BraTS23": ({"coregister", "skullstrip", "register_atlas"}, "SRI24_to_MNI152"),
    "UCSF": ({"coregister", "skullstrip"}, None),
    "UPENN": ({"coregister", "skullstrip", "register_atlas"}, "SRI24_to_MNI152"),
    "EGD": ({"coregister", "skullstrip", "register_atlas"}, None),
    "Hospital": (set(), None),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["demo"].update(subjects_per_site=1, external_subjects=1)
    work = write_tiny(tmp_path_factory.mktemp("kinds"), cfg, sites=SITES)
    specs = default_site_specs(len(SITES), cfg["demo"]["seed"])
    subjects = {site: site_subject_ids(spec, i, 1)[0] for i, ((site, _), spec) in enumerate(zip(SITES, specs, strict=True))}
    targets = []
    for site, sub in subjects.items():
        targets += [f"results/sites/{site}/prep/sub-{sub}_train.npz", f"results/sites/{site}/qc/site_qc.tsv"]
    res = snakemake(work, "--cores", "2", *targets)
    assert res.returncode == 0, res.stderr[-6000:]
    return work, subjects


@pytest.mark.parametrize("site", list(EXPECTED))
def test_declared_steps_are_skipped_and_recorded(run, site: str) -> None:
    work, subjects = run
    sub = subjects[site]
    final = json.loads((work / f"results/sites/{site}/prep/sub-{sub}/06_normalise/state.json").read_text())
    skipped = {s["name"]: s.get("reason", "") for s in final["steps"] if s.get("skipped")}
    want, transform = EXPECTED[site]
    assert set(skipped) == want, skipped
    assert all(reason for reason in skipped.values())
    atlas = final["transforms"]["atlas"]
    assert atlas["template"] == "MNI152" and atlas.get("template_transform") == transform
    assert (work / f"results/sites/{site}/prep/sub-{sub}_train.npz").is_file()
    qc = pd.read_csv(work / f"results/sites/{site}/qc/site_qc.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert qc["skipped"].tolist() == [", ".join(s["name"] for s in final["steps"] if s.get("skipped"))]


def test_one_template_transform_serves_every_sri24_site(run) -> None:
    work, _ = run
    assert sorted(p.name for p in (work / "results/templates").iterdir()) == ["SRI24_to_MNI152"]
    meta = json.loads((work / "results/templates/SRI24_to_MNI152/transform.json").read_text())
    assert meta["brain_dice_after"] > 0.93
    # one job for three SRI24 sites, none per subject
    assert len(list((work / "logs/template_transform").iterdir())) == 1


def test_check_inputs_accepts_every_site(run) -> None:
    work, _ = run
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run([str(BIN / "fedglioma"), "cohort", "check-inputs", "--sites", "config/sites.tsv", "--config",
                          "config/config.yaml"], cwd=work, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    for site, _ in SITES:
        assert site in res.stdout
