"""A site that fails in one round, through the rules: the round aggregates without it when the quorum holds, the
site rejoins in the next round, the sidecars, training table and report say who took part and why not; below the
quorum the aggregate job fails naming the site."""

from __future__ import annotations

import json
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


def test_failed_site_is_left_out_and_rejoins(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGLIOMA_FAULTS", FAULT)
    write_tiny(work, {**TINY_CONFIG, "federated": {**TINY_CONFIG["federated"], "min_sites": 1, "site_attempts": 2}})
    res = snakemake(work, "--cores", "2", *RETRAIN, "results/report/index.html")
    assert res.returncode == 0, res.stderr[-6000:]

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


def test_below_the_quorum_the_round_fails_naming_the_site(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGLIOMA_FAULTS", FAULT)
    write_tiny(work, {**TINY_CONFIG, "federated": {**TINY_CONFIG["federated"], "min_sites": 2, "site_attempts": 1}})
    res = snakemake(work, "--cores", "2", *RETRAIN, "results/federated/round-1/global.safetensors")
    assert res.returncode != 0
    log = (work / "logs/aggregate/round-1.log").read_text()
    assert "1 of 2 sites delivered an accepted update, below the quorum of 2" in log
    assert "site B (failed)" in log and "InjectedFault" in log
    assert not (work / "results/federated/round-1/global.safetensors").exists()
