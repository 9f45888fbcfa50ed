"""The real workflow end to end on a tiny demo cohort: 2 training sites x 2 rounds + 1 external site."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fedglioma.audit import audit_workflow
from tests.browser import CHROMIUM, check_page
from tests.integration.tiny import REPO, TINY_CONFIG, snakemake, write_tiny

pytestmark = pytest.mark.slow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    return tiny_run


def test_every_round_has_its_files(run: Path) -> None:
    for rnd in (0, 1, 2):
        assert (run / f"results/federated/round-{rnd}/global.safetensors").is_file()
        assert (run / f"results/federated/round-{rnd}/global.json").is_file()
    for rnd in (1, 2):
        for site in ("A", "B"):
            d = run / f"results/sites/{site}/federated/round-{rnd}"
            side = json.loads((d / "update.json").read_text())
            assert side["round"] == rnd and side["site"] == site and side["n_train"] >= 1
            assert side["sha256"] == sha(d / "update.safetensors")
            val = json.loads((d / "validation.json").read_text())
            assert "metrics" in val and "subject" not in json.dumps(val)
    final = json.loads((run / "results/federated/final.json").read_text())
    assert final["round"] in (1, 2)


def test_external_site_outputs(run: Path) -> None:
    ev = run / "results/sites/X/evaluation/federated"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["site"] == "X"
    assert {"segmentation", "markers"} <= set(metrics) or "markers" in json.dumps(metrics)
    assert (ev / "figures" / "roc.png").is_file()
    masks = sorted((ev / "masks").glob("*.nii.gz"))
    assert len(masks) == 3
    # native-space masks have exactly the geometry of the subject's original T1c
    subject = masks[0].name.removeprefix("sub-").split("_desc-")[0]
    from fedglioma.io.layouts import discover

    found = {s.subject: s for s in discover(run / "results/demo/X", "upenn_gbm", "X").subjects}
    t1c = nib.load(found[subject].images["T1c"])
    m = nib.load(masks[0])
    assert m.shape == t1c.shape and np.allclose(m.affine, t1c.affine, atol=1e-4)
    # Dice/HD95/volumes are measured there, against the site's own segmentation file (not on the network grid)
    seg = pd.read_csv(ev / "segmentation.tsv", sep="\t", dtype={"subject": str}).set_index("subject")
    assert {"dice", "hd95", "volume_diff_ml", "dice_grid", "hd95_grid", "volume_diff_ml_grid"} <= set(seg.columns)
    truth = np.isin(np.asarray(nib.load(found[subject].seg).dataobj), (1, 2, 3, 4))
    pred = np.asarray(m.dataobj) > 0
    assert seg.loc[subject, "dice"] == pytest.approx(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    zooms = np.prod(t1c.header.get_zooms()[:3]) / 1000
    assert seg.loc[subject, "volume_diff_ml"] == pytest.approx((pred.sum() - truth.sum()) * zooms, rel=1e-5)
    assert "network_grid" in metrics["segmentation"]


def test_reports(run: Path, tmp_path: Path) -> None:
    html = run / "results/report/index.html"
    text = html.read_text()
    assert "synthetic" in text.lower() and "Headline" in text
    res = snakemake(run, "--cores", "1", "--report", str(tmp_path / "snakemake_report.html"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "snakemake_report.html").stat().st_size > 10_000
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    check_page(html, tmp_path)


def test_scope_audit_passes(run: Path) -> None:
    res = audit_workflow(REPO / "Snakefile", [run / "config/config.yaml"], workdir=run)
    assert res.ok, res.violations


def test_resume_after_deleting_last_round_is_bit_identical(run: Path) -> None:
    final_model = run / "results/federated/round-2/global.safetensors"
    before = sha(final_model)
    for site in ("A", "B"):
        shutil.rmtree(run / f"results/sites/{site}/federated/round-2")
    for f in (run / "results/federated/round-2").iterdir():
        f.unlink()
    res = snakemake(run, "--cores", "2", "results/federated/round-2/global.safetensors")
    assert res.returncode == 0, res.stderr[-4000:]
    assert sha(final_model) == before


def test_baselines_and_comparison(run: Path) -> None:
    """Switching the baselines on reuses the preprocessing and adds centralized and local-only models, trained on
    exactly the sites' own training splits, checkpointed per round and selected by the federation's rule."""
    cfg = {**TINY_CONFIG, "baselines": {"centralized": True, "local_only": True}}
    write_tiny(run, cfg)
    res = snakemake(run, "--cores", "2")
    assert res.returncode == 0, res.stderr[-6000:]
    fed_n = {s: json.loads((run / f"results/sites/{s}/federated/round-1/update.json").read_text())["n_train"]
             for s in ("A", "B")}
    for model, root, sites in (
        ("centralized", run / "results/baselines/centralized", ("A", "B")),
        ("local-A", run / "results/sites/A/baselines/local_only", ("A",)),
        ("local-B", run / "results/sites/B/baselines/local_only", ("B",)),
    ):
        metrics = json.loads((run / f"results/sites/X/evaluation/{model}/metrics.json").read_text())
        assert metrics["site"] == "X"
        final = json.loads((root / "final.json").read_text())
        assert final["round"] in (1, 2) and final["score_metrics"]
        # the evaluated model is the round that the validation selected, as for the federation
        chosen = root / f"round-{final['round']}/model.safetensors"
        assert metrics["model"]["file"].endswith(str(chosen.relative_to(run))) and metrics["model"]["round"] == final["round"]
        assert metrics["model"]["sha256"] == sha(chosen)
        meta = json.loads((root / "round-2/model.json").read_text())
        # the training subjects are exactly the union of the sites' own training splits
        assert meta["n_train"] == sum(fed_n[s] for s in sites)
        assert meta["epochs"] == 2 * TINY_CONFIG["train"]["epochs_per_round"]
    table = pd.read_csv(run / "results/sites/X/evaluation/comparison.tsv", sep="\t")
    assert {"federated", "centralized", "local-A", "local-B"} <= {c.split("_")[0] for c in table.columns}
    assert "ratio_federated_centralized" in table.columns
    assert "auc:codeletion_other" in set(table["key"])
    html = (run / "results/report/index.html").read_text()
    assert "centralized" in html and "No comparison given" not in html


def test_fedbn_is_not_evaluated_externally(tmp_path: Path) -> None:
    """With site-local parameters (FedBN) no validated model exists for a site that never trained: the plan has
    no external evaluation of the federated model (it used to evaluate the round-0 norm parameters)."""
    cfg = {**TINY_CONFIG, "federated": {**TINY_CONFIG["federated"], "site_local_patterns": ["*.norm*"]},
           "baselines": {"centralized": True, "local_only": False}}
    work = write_tiny(tmp_path, cfg)
    res = snakemake(work, "-n", "--quiet", "rules", "--cores", "1")
    assert res.returncode == 0, res.stderr[-4000:]
    plan = res.stdout + res.stderr
    assert "validate" in plan and "report" in plan
    res = snakemake(work, "-n", "--cores", "1", "results/report/index.html")
    jobs = res.stdout
    assert "results/sites/X/evaluation/centralized/metrics.json" in jobs
    assert "results/sites/X/evaluation/federated/metrics.json" not in jobs
