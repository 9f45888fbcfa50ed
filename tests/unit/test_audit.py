"""``fedglioma workflow audit-scope`` on hand-made jobs and on a deliberately leaky workflow."""

from __future__ import annotations

import shutil
from pathlib import Path

from fedglioma.audit import JobView, audit_jobs, audit_workflow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "leaky"
ROOTS = {"A": ["data/A"], "B": ["data/B"]}


def job(rule: str, inputs: list[str], outputs: list[str], site: str | None = None, **res: str) -> JobView:
    return JobView(rule, {"site": site} if site else {}, inputs, outputs, res)


def test_site_job_in_own_scope_passes() -> None:
    jobs = [
        job("import", ["data/A/s1/t1.nii.gz"], ["results/sites/A/prep/s1"], "A"),
        job(
            "local_train",
            ["results/federated/round-0/global.safetensors", "results/sites/A/prep/s1_train.npz"],
            ["results/sites/A/federated/round-1/update.safetensors"],
            "A",
        ),
        job(
            "aggregate",
            ["results/sites/A/federated/round-1/update.safetensors", "results/sites/B/federated/round-1/update.json"],
            ["results/federated/round-1/global.safetensors"],
        ),
    ]
    assert audit_jobs(jobs, ROOTS, {}).ok


def test_predict_site_jobs_stay_in_their_scope() -> None:
    """A predict site reads its raw files and the bundle and writes its predictions; the target rule `all` names
    the site's private table and runs nothing; a coordinator job reading the predictions fails."""
    jobs = [
        job("predict_subject", ["data/A/s1/t1.nii.gz", "results/model/fedglioma-model.zip"],
            ["results/sites/A/predictions/sub-s1"], "A"),
        job("predict_table", ["results/sites/A/predictions/sub-s1"], ["results/sites/A/predictions/predictions.tsv"],
            "A"),
        job("all", ["results/sites/A/predictions/predictions.tsv", "results/report/index.html"], []),
    ]
    assert audit_jobs(jobs, ROOTS, {}).ok
    leak = job("report", ["results/sites/A/predictions/predictions.tsv"], ["results/report/index.html"])
    assert not audit_jobs([leak], ROOTS, {}).ok


def test_server_reading_private_file_fails() -> None:
    res = audit_jobs([job("aggregate", ["results/sites/A/prep/s1_train.npz"], ["results/federated/x"])], ROOTS, {})
    assert not res.ok and "site A" in res.violations[0]


def test_site_job_reading_other_site_raw_data_fails() -> None:
    res = audit_jobs([job("import", ["data/B/s1/t1.nii.gz"], ["results/sites/A/prep/s1"], "A")], ROOTS, {})
    assert not res.ok and "site B" in res.violations[0]


def test_site_job_writing_outside_its_folder_fails() -> None:
    res = audit_jobs([job("local_train", [], ["results/federated/leak.npz"], "A")], ROOTS, {})
    assert not res.ok and "writes outside" in res.violations[0]


def test_wrong_account_fails() -> None:
    res = audit_jobs(
        [job("n4", [], ["results/sites/A/prep/x"], "A", slurm_account="acct_B")],
        ROOTS,
        {"A": {"slurm_account": "acct_A"}},
    )
    assert not res.ok and "slurm_account" in res.violations[0]


def test_pooled_baseline_is_reported_not_failed() -> None:
    res = audit_jobs(
        [job("centralized_train", ["results/sites/A/prep/s1_train.npz"], ["results/baselines/c/m"])], ROOTS, {}
    )
    assert res.ok and res.pooled


def test_leaky_workflow_fails(tmp_path: Path) -> None:
    work = tmp_path / "wf"
    shutil.copytree(FIXTURE, work)
    res = audit_workflow(work / "Snakefile", [work / "config.yaml"], workdir=work)
    assert res.n_jobs >= 5
    assert len(res.violations) == 1 and res.violations[0].startswith("pool[")
    # the same workflow without the leaky input passes
    text = (
        (work / "Snakefile")
        .read_text()
        .replace('        "results/sites/A/prep/data.txt",\n        expand(', "        expand(")
    )
    (work / "Snakefile").write_text(text)
    assert audit_workflow(work / "Snakefile", [work / "config.yaml"], workdir=work).ok
