"""A site that fails in one round, through the rules: the round aggregates without it when the quorum holds, the
site rejoins in the next round, the sidecars, training table and report say who took part and why not; below the
quorum the aggregate job fails naming the site.

The first run trains with patient-level DP (``train.privacy``) too, so one retrain of the tiny federation checks both
and how they meet: every update sidecar and validation JSON carries the site's spent (epsilon, delta), the curves
and the report show it, and the failed site's privacy history carries over its failed round unchanged."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.tiny import TINY_CONFIG, snakemake, write_tiny

pytestmark = pytest.mark.slow

FAULT = "local_train/B/round-1/*=raise"
#: Retrain the federation from its initialisation and nothing upstream of it.
RETRAIN = ("--rerun-triggers", "mtime", "--forcerun", "init_model")


@pytest.fixture(scope="module")
def work(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny run whose ``results/`` are hard links (outputs are replaced by rename, never
    written in place, so the session's run stays untouched; Snakemake's metadata and the logs are real copies).
    Runs retrain the federation from round 0 (``RETRAIN``) and reuse the rest."""
    dst = tmp_path_factory.mktemp("failed_site") / "work"
    shutil.copytree(tiny_run, dst, symlinks=True, ignore=shutil.ignore_patterns("results"))
    shutil.copytree(tiny_run / "results", dst / "results", symlinks=True, copy_function=os.link)
    return dst


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def dp_failed(work: Path) -> Path:
    """The federation retrained with DP on (target epsilon 8) and site B failing round 1 (two attempts)."""
    cfg = {**TINY_CONFIG, "federated": {**TINY_CONFIG["federated"], "min_sites": 1, "site_attempts": 2},
           "train": {**TINY_CONFIG["train"], "privacy": {"enabled": True, "target_epsilon": 8.0}}}
    write_tiny(work, cfg)
    env = {**os.environ, "FEDGLIOMA_FAULTS": FAULT}
    res = snakemake(work, "--cores", "2", *RETRAIN, "results/report/index.html", env=env)
    assert res.returncode == 0, res.stderr[-6000:]
    return work


def test_failed_site_is_left_out_and_rejoins(dp_failed: Path) -> None:
    work = dp_failed

    failed = _json(work / "results/sites/B/federated/round-1/update.json")
    assert failed["status"] == "failed" and failed["attempts"] == 2 and "local_train/B/round-1/start" in failed["reason"]
    log = (work / "logs/local_train/B/round-1.log").read_text()
    assert "attempt 1 of 2 failed" in log and "attempt 2 of 2 failed" in log

    r1 = _json(work / "results/federated/round-1/global.json")
    assert [s["site"] for s in r1["sites"]] == ["A"] and r1["quorum"] == 1
    (e,) = r1["excluded"]
    assert e["site"] == "B" and e["stage"] == "failed" and "InjectedFault" in e["reason"]
    assert r1["n_train"] == _json(work / "results/sites/A/federated/round-1/update.json")["n_train"]
    r2 = _json(work / "results/federated/round-2/global.json")
    assert [s["site"] for s in r2["sites"]] == ["A", "B"] and r2["excluded"] == []
    # B trained round 2 from the round-1 model that it did not contribute to
    assert _json(work / "results/sites/B/federated/round-2/update.json")["global_sha256"] == r1["sha256"]

    table = pd.read_csv(work / "results/federated/training_curves.tsv", sep="\t", keep_default_na=False)
    status = {(r.site, r.round): r.status for r in table.itertuples()}
    assert status == {("A", 1): "aggregated", ("B", 1): "failed", ("A", 2): "aggregated", ("B", 2): "aggregated"}
    html = (work / "results/report/index.html").read_text()
    assert "Participation per round" in html and "round 1, site B: failed" in html


def test_dp_shows_epsilon_per_site_and_carries_a_failed_round(dp_failed: Path) -> None:
    work = dp_failed

    def spent(site: str, rnd: int) -> dict:
        d = work / f"results/sites/{site}/federated/round-{rnd}"
        val = _json(d / "validation.json")["privacy"]
        upd = _json(d / "update.json")
        if upd.get("status") != "failed":
            assert upd["privacy"] == val and upd["train_losses"] is None  # losses are not privatised: not sent
        return val

    steps = {s: math.ceil(_json(work / f"results/sites/{s}/federated/round-2/update.json")["n_train"] / 2)
             for s in ("A", "B")}  # Poisson sampling: ceil(n / batch) steps per epoch, 1 epoch per round
    a1, a2 = spent("A", 1), spent("A", 2)
    assert 0 < a1["epsilon"] < a2["epsilon"] <= 8.0 and a2["delta"] > 0
    assert (a1["steps"], a2["steps"]) == (steps["A"], 2 * steps["A"])
    # B failed round 1: nothing trained then left the site, so round 2 is its first spend
    b1, b2 = spent("B", 1), spent("B", 2)
    assert b1 == {"epsilon": 0.0} and b2["steps"] == steps["B"] and 0 < b2["epsilon"] < 8.0
    for site in ("A", "B"):
        assert (work / f"results/sites/{site}/federated/dp_noise.key").is_file()
        assert "history" not in _json(work / f"results/sites/{site}/federated/round-2/update.json")["privacy"]
    curves = pd.read_csv(work / "results/federated/training_curves.tsv", sep="\t")
    assert curves["epsilon"].notna().all() and (curves.groupby("site")["epsilon"].is_monotonic_increasing).all()
    html = (work / "results/report/index.html").read_text()
    assert "Differential privacy" in html and "ε" in html


def test_below_the_quorum_the_round_fails_naming_the_site(dp_failed: Path) -> None:
    work = dp_failed
    write_tiny(work, {**TINY_CONFIG, "federated": {**TINY_CONFIG["federated"], "min_sites": 2, "site_attempts": 1}})
    res = snakemake(work, "--cores", "2", *RETRAIN, "results/federated/round-1/global.safetensors",
                    env={**os.environ, "FEDGLIOMA_FAULTS": FAULT})
    assert res.returncode != 0
    log = (work / "logs/aggregate/round-1.log").read_text()
    assert "1 of 2 sites delivered an accepted update, below the quorum of 2" in log
    assert "site B (failed)" in log and "InjectedFault" in log
    assert not (work / "results/federated/round-1/global.safetensors").exists()
