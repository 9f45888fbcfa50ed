"""Each site's jobs carry that site's SLURM partition and account; the coordinator's carry its own.

No cluster needed: the job DAG is built through Snakemake's API (nothing runs), and the SLURM
profile dry-runs the default workflow.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from fedglioma.audit import audit_workflow, dag_jobs
from tests.integration.tiny import BIN, REPO, TINY_CONFIG, write_tiny

SCOPES = {"A": ("part_a", "acct_a"), "B": ("part_b", "acct_b"), "X": ("part_x", "acct_x")}


def test_site_jobs_carry_site_partition_and_account(tmp_path: Path) -> None:
    cfg = {**TINY_CONFIG, "cluster": {"partition": "main", "coordinator_partition": "coord",
                                      "coordinator_account": "coord_acct"},
           "baselines": {"centralized": True, "local_only": True}}
    extra = {s: {"slurm_partition": p, "slurm_account": a} for s, (p, a) in SCOPES.items()}
    work = write_tiny(tmp_path, cfg, extra_columns=extra)
    jobs, _ = dag_jobs(REPO / "Snakefile", [work / "config/config.yaml"], workdir=work)
    assert len(jobs) >= 45  # one preprocessing job per subject
    n_site = 0
    for job in jobs:
        if job.rule == "all":
            continue
        site = job.wildcards.get("site")
        want = SCOPES[site] if site else ("coord", "coord_acct")
        got = (job.resources.get("slurm_partition"), job.resources.get("slurm_account"))
        assert got == want, f"{job.rule} {dict(job.wildcards)}: {got} != {want}"
        n_site += site is not None
    assert n_site > 30
    # the scope audit agrees, and reports the pooled centralized baseline without failing
    res = audit_workflow(REPO / "Snakefile", [work / "config/config.yaml"], workdir=work)
    assert res.ok, res.violations
    assert any(line.startswith("centralized_train") for line in res.pooled)


def test_empty_site_columns_fall_back_to_cluster_defaults(tmp_path: Path) -> None:
    cfg = {**TINY_CONFIG, "cluster": {"partition": "main", "account": "lab"}}
    work = write_tiny(tmp_path, cfg, extra_columns={"A": {"slurm_partition": "part_a", "slurm_account": ""}})
    jobs, _ = dag_jobs(REPO / "Snakefile", [work / "config/config.yaml"], workdir=work)
    scopes = {(j.wildcards.get("site"), j.resources.get("slurm_partition"), j.resources.get("slurm_account"))
              for j in jobs if j.rule != "all"}
    assert ("A", "part_a", "lab") in scopes and ("B", "main", "lab") in scopes and (None, "main", "lab") in scopes


def test_slurm_profile_plans_default_workflow() -> None:
    # --forceall: plan every job even after a `make demo` in this checkout has produced the results
    res = subprocess.run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "-n", "--forceall", "--quiet", "rules"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "local_train" in res.stdout + res.stderr and "aggregate" in res.stdout + res.stderr


def test_default_config_passes_the_scope_audit() -> None:
    res = audit_workflow(REPO / "Snakefile", [REPO / "config/config.yaml"], workdir=REPO)
    assert res.ok, res.violations
    assert res.n_jobs > 140  # 43 subjects (one preprocessing job each), 5 rounds, baselines
