"""The paper recipe (config/paper.yaml): it overlays config.yaml, validates, builds, and plans the paper's cohort.

The cohort: 1,552 training subjects over five sites (the assumed split of docs/training.md, largest 495) and 466
external subjects, as real-layout folders of EMPTY placeholder files (discovery looks at file names only), planned
with ``snakemake -n --configfile config/config.yaml config/paper.yaml`` exactly as a user would run it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.integration.tiny import REPO, snakemake

CONFIGS = (REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml")
#: assumed split of the paper's 1,552 training subjects (docs/training.md), and the external test set
SPLIT = {"UCSF_PDGM": 495, "SiteB": 360, "SiteC": 300, "SiteD": 230, "SiteE": 167}
EXTERNAL = 466
HEADER = "site\trole\tlayout\tpath\tclinical\ttumour_labels\tskull_stripped\tspace\n"


def merged() -> dict:
    """config.yaml overlaid with paper.yaml by Snakemake's own merge (``--configfile A B``)."""
    from snakemake.utils import update_config

    cfg: dict = {}
    for p in CONFIGS:
        update_config(cfg, yaml.safe_load(p.read_text()))
    return cfg


def test_overlay_merges_validates_and_parses() -> None:
    from fedglioma.model import ModelConfig
    from fedglioma.settings import load_config
    from fedglioma.train.schedule import lr_table

    base, paper, cfg = yaml.safe_load(CONFIGS[0].read_text()), yaml.safe_load(CONFIGS[1].read_text()), merged()
    # nested keys merge one by one: the overlay's grid replaces the demo's, the rest of preprocess stays
    assert cfg["preprocess"]["grid"] == paper["preprocess"]["grid"]
    assert cfg["preprocess"]["skullstrip"] == base["preprocess"]["skullstrip"]
    assert cfg["preprocess"]["atlas"]["template"] == base["preprocess"]["atlas"]["template"]
    assert cfg["train"]["task_weights"] == base["train"]["task_weights"]
    assert cfg["clinical"] == base["clinical"] and cfg["demo"]["enabled"] is False
    path = REPO / "results" / ".pytest_paper_config.yaml"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        loaded = load_config(path)  # every key is in the model
        m, t, f = loaded.model, loaded.train, loaded.federated
    finally:
        path.unlink(missing_ok=True)
    assert isinstance(m, ModelConfig) and (m.width, m.depth) == (16, 4)
    assert (t.batch_size, t.epochs_per_round, t.amp, t.augment.enabled) == (2, 1, True, True)
    assert f.rounds == 100 and t.lr_schedule.name == "cosine"
    lrs = lr_table(t, f.rounds)
    assert max(lrs) == t.lr and lrs[-1] < t.lr / 50


def test_grid_covers_the_template_brain_and_fits_the_network() -> None:
    from nilearn import datasets

    cfg = merged()
    shape = np.array(cfg["preprocess"]["grid"]["grid_shape"])
    fov = shape * float(cfg["preprocess"]["grid"]["grid_spacing"])
    mask = datasets.load_mni152_brain_mask(resolution=1)
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)
    brain_mm = (idx.max(0) + 1 - idx.min(0)) * np.sqrt((mask.affine[:3, :3] ** 2).sum(0))
    assert np.all(fov >= brain_mm + 10), (fov, brain_mm)  # at least 5 mm each side after affine registration
    assert cfg["preprocess"]["atlas"]["resolution_mm"] <= cfg["preprocess"]["grid"]["grid_spacing"]
    assert np.all(shape % 2 ** cfg["model"]["depth"] == 0)  # no padding inside the network
    # the demo grid does not cover the brain in z (documented in config/paper.yaml and docs/training.md)
    demo = yaml.safe_load(CONFIGS[0].read_text())["preprocess"]["grid"]
    assert (np.array(demo["grid_shape"]) * demo["grid_spacing"])[2] < brain_mm[2]


def test_model_builds_at_the_recipe() -> None:
    """The recipe's network builds and runs (a small grid here; the full grid: benchmarks/paper_recipe.py)."""
    import torch

    from fedglioma.model import ModelConfig, build_model

    model = build_model(ModelConfig.model_validate(merged()["model"]))
    n = sum(p.numel() for p in model.parameters())
    assert 5e6 < n < 2e7, n
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 4, 32, 32, 32))
    assert out["seg"].shape == (1, 1, 32, 32, 32) and out["grade"].shape == (1, 3)


def make_cohort(work: Path) -> dict[str, int]:
    """Placeholder sites (``brats2021`` layout, empty files) and ``config/sites.tsv`` under ``work``."""
    sites = {**SPLIT, "External": EXTERNAL}
    rows = []
    for si, (site, n) in enumerate(sites.items()):
        d = work / "data" / site
        lines = ["subject\tIDH\t1p19q\tMGMT\tgrade"]
        for i in range(n):
            sid = f"BraTS2021_{(si + 1) * 10000 + i:05d}"
            (d / sid).mkdir(parents=True)
            for f in ("t1", "t1ce", "t2", "flair", "seg"):
                (d / sid / f"{sid}_{f}.nii.gz").touch()
            lines.append(f"{sid}\twildtype\t\tunmethylated\t4")
        (d / "clinical.tsv").write_text("\n".join(lines) + "\n")
        role = "external" if site == "External" else "train"
        rows.append(f"{site}\t{role}\tbrats2021\tdata/{site}\tdata/{site}/clinical.tsv\t1,2,4\tyes\tnative\n")
    (work / "config").mkdir()
    (work / "config" / "sites.tsv").write_text(HEADER + "".join(rows))
    return sites


@pytest.mark.slow
def test_recipe_plans_the_papers_cohort(tmp_path: Path) -> None:
    sites = make_cohort(tmp_path)
    n_sub, n_train_sites = sum(sites.values()), len(SPLIT)
    assert (n_sub, sum(SPLIT.values())) == (2018, 1552)
    rounds = 100
    t0 = time.perf_counter()
    res = snakemake(tmp_path, "--configfile", *map(str, CONFIGS), "-n", "--cores", "2", "--quiet", "rules",
                    timeout=900)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", res.stdout + res.stderr, re.M)}
    print(f"snakemake -n of {n_sub} subjects, {rounds} rounds: {counts.get('total')} jobs in {wall:.1f} s: {counts}")
    assert counts["preprocess_subject"] == n_sub  # one job per subject for the whole chain
    assert counts["local_train"] == counts["validate_round"] == n_train_sites * rounds
    assert counts["aggregate"] == rounds
    assert counts["training_set"] == n_train_sites
    assert counts["init_model"] == counts["select_model"] == 1
    assert "synth_site" not in counts  # real data: nothing generated
    assert "centralized_train" not in counts  # a real federation pools nothing
    assert counts["local_only_train"] == n_train_sites
