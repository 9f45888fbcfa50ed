"""The SLURM profile against a real SLURM cluster (private, single node: tests/slurm/cluster.sh).

Each site's jobs must run under that site's own partition and account. These tests run a
workflow through ``snakemake --profile profiles/slurm`` (executor plugin ``slurm``: every job is
an ``sbatch`` job) and read back from ``sacct`` (the accounting database, as on a real cluster)
which partition and account every job ran under. A submission SLURM refuses must fail fast with
SLURM's own message, never hang.

Needs root (the cluster runs munged, MariaDB, slurmdbd, slurmctld and slurmd) and either SLURM
installed or apt-get (``cluster.sh start`` installs the Debian packages). The fixture starts the
cluster and always stops it again, unless it was already running before the tests (then it is
left as found). FEDGLIOMA_SLURM_KEEP=1 keeps it running for debugging; FEDGLIOMA_REQUIRE_SLURM=1
(CI) turns the skip into a failure.

The workflow under test is a parameter (:class:`WorkflowCase`): a tiny throwaway Snakefile with
per-site rules for now; a case for the real workflow with a tiny config plugs in the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
STATE = Path(os.environ.get("FEDGLIOMA_SLURM_DIR", "/tmp/fedglioma-slurm"))

# Poll SLURM every second instead of the profile's 40 s/30 s (a job then takes ~12 s end to end).
FAST_STATUS = [
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "1",
    "--latency-wait",
    "5",
]
CLUSTER_START_TIMEOUT = 600  # includes a first-time apt-get install
# a guard against a hung run, not a speed target: the workflow case (9 SLURM jobs, two preprocessed subjects)
# took 300 s and more on a shared 2-core host
WORKFLOW_TIMEOUT = 900
FAIL_TIMEOUT = 120


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "SLURM test cluster needs Linux"
    if os.geteuid() != 0:
        return "needs root: tests/slurm/cluster.sh starts munged, MariaDB and the SLURM daemons"
    have_slurm = all(shutil.which(t) for t in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "munged"))
    if not have_slurm and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is unavailable to install it"
    return None


@dataclass
class SlurmCluster:
    env: dict[str, str]
    start_seconds: float
    cpus: int = 1  # of the (single) node
    mem_mb: int = 1000

    def run(self, *args: str, timeout: float = 60) -> str:
        res = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res.stdout

    def jobs_in(self, workdir: Path, *, settle_s: float = 20) -> list[dict[str, str]]:
        """sacct rows (allocations only) of the jobs submitted from ``workdir``, once all are final."""
        fields = ["JobID", "JobName", "Partition", "Account", "State", "Comment", "WorkDir"]
        end = time.monotonic() + settle_s
        while True:
            out = self.run(
                "sacct", "-X", "-n", "-P", "--starttime", "now-1days", "--format", ",".join(f"{f}%400" for f in fields)
            )
            rows = [dict(zip(fields, line.split("|"), strict=False)) for line in out.splitlines() if line]
            rows = [r for r in rows if Path(r["WorkDir"]) == workdir]
            if all(r["State"] not in ("PENDING", "RUNNING", "COMPLETING") for r in rows) or time.monotonic() > end:
                return rows
            time.sleep(1)

    def cancel_jobs_in(self, workdir: Path) -> None:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i|%Z"], env=self.env, capture_output=True, text=True, timeout=30
        ).stdout
        ids = [i for i, _, wd in (line.partition("|") for line in out.splitlines()) if Path(wd) == workdir]
        if ids:
            subprocess.run(["scancel", *ids], env=self.env, timeout=30, check=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = _skip_reason()
    if reason:
        if os.environ.get("FEDGLIOMA_REQUIRE_SLURM") == "1":  # CI: a skipped SLURM test is a failure
            pytest.fail(f"FEDGLIOMA_REQUIRE_SLURM=1 but the SLURM tests cannot run: {reason}")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SNAKEMAKE_"))}
    env["FEDGLIOMA_SLURM_DIR"] = str(STATE)
    was_up = subprocess.run([str(CLUSTER_SH), "status"], env=env, capture_output=True, timeout=60).returncode == 0
    t0 = time.monotonic()
    try:
        start = subprocess.run(
            [str(CLUSTER_SH), "start"], env=env, capture_output=True, text=True, timeout=CLUSTER_START_TIMEOUT
        )
        if start.returncode != 0:
            pytest.fail(f"tests/slurm/cluster.sh start failed ({start.returncode}):\n{start.stdout}{start.stderr}")
        start_s = time.monotonic() - t0
        print(f"\nSLURM test cluster up in {start_s:.1f}s ({'already running' if was_up else 'started'})")
        env["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")
        env["PATH"] = f"{STATE / 'bin'}:{env.get('PATH', '')}"  # see cluster.sh: srun wrapper
        cluster = SlurmCluster(env=env, start_seconds=start_s)
        cpus, mem = cluster.run("sinfo", "-h", "-N", "-o", "%c %m").split()[:2]
        cluster.cpus, cluster.mem_mb = int(cpus), int(mem)
        yield cluster
    finally:
        if not was_up and os.environ.get("FEDGLIOMA_SLURM_KEEP") != "1":
            stop = subprocess.run([str(CLUSTER_SH), "stop"], env=env, capture_output=True, text=True, timeout=300)
            status = subprocess.run([str(CLUSTER_SH), "status"], env=env, capture_output=True, text=True, timeout=60)
            assert stop.returncode == 0, f"cluster.sh stop failed:\n{stop.stdout}{stop.stderr}"
            assert status.returncode == 3, f"daemons left running after cluster.sh stop:\n{status.stdout}"


# ---- running Snakemake with a hard timeout ---------------------------------------------------
@dataclass
class Run:
    returncode: int
    output: str
    seconds: float


def node_capped_overrides(cluster: SlurmCluster, profile: Path = PROFILE / "config.yaml") -> list[str]:
    """The profile's set-threads/set-resources, capped at what the test node has.

    The profile asks for real-cluster sizes (e.g. 8 threads for local_train); a request larger than
    the node is refused by sbatch. Given on the command line these replace the profile's lists.
    """
    data = yaml.safe_load(profile.read_text())
    mem_cap = max(cluster.mem_mb // 2, 500)
    threads = [f"{rule}={min(int(n), cluster.cpus)}" for rule, n in data.get("set-threads", {}).items()]
    resources = []
    for rule, res in data.get("set-resources", {}).items():
        for key, value in res.items():
            if key == "mem_mb":
                value = min(int(value), mem_cap)
            resources.append(f"{rule}:{key}={value}")
    return ["--set-threads", *threads, "--set-resources", *resources]


def run_snakemake(cluster: SlurmCluster, workdir: Path, args: list[str], *, timeout: float) -> Run:
    """``snakemake --profile profiles/slurm <args>`` in ``workdir``; killed (and its jobs cancelled) on timeout.

    Status checks every second, and per-rule threads/memory capped at the test node's size.
    """
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(PROFILE),
        *node_capped_overrides(cluster),  # list options: keep them before FAST_STATUS ends them
        *FAST_STATUS,
        *args,
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # a SIGINT ignored by our parent (background CI shells) would be inherited; Snakemake
        # cancels its SLURM jobs on SIGINT, so give it the default handler back
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its SLURM jobs on SIGINT
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        cluster.cancel_jobs_in(workdir)
        pytest.fail(f"snakemake did not finish within {timeout:.0f}s and was killed:\n$ {' '.join(cmd)}\n{out[-6000:]}")
    return Run(proc.returncode, out, time.monotonic() - t0)


# ---- the workflows under test ------------------------------------------------------------------
@dataclass
class WorkflowCase:
    """A workflow to run on the cluster and what sacct must show for it.

    ``expected(rule, wildcards)`` gives the (partition, account) a job must have run under, or
    None for a job not checked; ``wildcards`` is the plugin's job comment suffix (the wildcard
    values joined by ``_``). Every rule in ``rules`` must have run at least once on SLURM.
    """

    name: str
    workdir: Path
    args: list[str]
    expected: Callable[[str, str], tuple[str, str] | None]
    rules: set[str]
    outputs: list[str] = field(default_factory=list)
    min_jobs: int = 1


TINY_SITES = {"siteA": ("siteA", "acct_a"), "siteB": ("siteB", "acct_b")}
TINY_COORDINATOR = ("coord", "coord")
DEFAULT_SCOPE = ("main", "root")  # cluster.sh: default partition, root's default account

TINY_SNAKEFILE = textwrap.dedent("""\
    # Throwaway workflow written by tests/integration/test_slurm.py: 4 SLURM jobs.
    configfile: "config.yaml"
    SITES = config["sites"]
    COORD = config["coordinator"]


    def site_partition(wildcards):
        return SITES[wildcards.site]["partition"]


    def site_account(wildcards):
        return SITES[wildcards.site]["account"]


    rule all:
        input:
            "out/report.txt",
        localrule: True


    rule prep:
        output:
            "out/{site}/prep.txt",
        resources:
            slurm_partition=site_partition,
            slurm_account=site_account,
            mem_mb=200,
            runtime=5,
        shell:
            "echo {wildcards.site} job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION > {output}"


    rule aggregate:
        input:
            expand("out/{site}/prep.txt", site=SITES),
        output:
            "out/aggregate.txt",
        resources:
            slurm_partition=COORD["partition"],
            slurm_account=COORD["account"],
            mem_mb=200,
            runtime=5,
        shell:
            "cat {input} > {output}"


    rule report:
        input:
            "out/aggregate.txt",
        output:
            "out/report.txt",
        resources:
            # empty: SLURM's default partition and account
            slurm_partition="",
            slurm_account="",
            mem_mb=200,
            runtime=5,
        shell:
            "cp {input} {output}"
    """)


def write_tiny_workflow(
    workdir: Path, sites: dict[str, tuple[str, str]], coordinator: tuple[str, str] = TINY_COORDINATOR
) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(TINY_SNAKEFILE)
    lines = ["sites:"] + [f"  {s}: {{partition: '{p}', account: '{a}'}}" for s, (p, a) in sites.items()]
    lines += [f"coordinator: {{partition: '{coordinator[0]}', account: '{coordinator[1]}'}}"]
    (workdir / "config.yaml").write_text("\n".join(lines) + "\n")
    return workdir


def tiny_case(tmp_path: Path) -> WorkflowCase:
    workdir = write_tiny_workflow(tmp_path / "tiny", TINY_SITES)

    def expected(rule: str, wildcards: str) -> tuple[str, str] | None:
        if rule == "prep":
            return TINY_SITES[site_of(wildcards, TINY_SITES)]
        return {"aggregate": TINY_COORDINATOR, "report": DEFAULT_SCOPE}.get(rule)

    return WorkflowCase(
        "tiny",
        workdir,
        ["--snakefile", str(workdir / "Snakefile")],
        expected,
        rules={"prep", "aggregate", "report"},
        outputs=["out/siteA/prep.txt", "out/siteB/prep.txt", "out/report.txt"],
        min_jobs=4,
    )


def site_of(wildcards: str, sites: Iterable[str]) -> str | None:
    """The site named among a job's wildcard values (joined by ``_`` in the plugin's comment), if any."""
    for site in sorted(sites, key=len, reverse=True):
        if re.search(rf"(^|_){re.escape(site)}(_|$)", wildcards):
            return site
    return None


WORKFLOW_SITES = {"A": ("siteA", "acct_a"), "B": ("siteB", "acct_b"), "X": ("main", "root")}


def workflow_case(tmp_path: Path) -> WorkflowCase:
    """The real workflow on the tiny demo cohort, up to a narrow target: each site generates its data,
    harmonises its labels and the two training sites preprocess one subject each (one job per subject), each
    under its own partition and account; the one
    template transform (public templates only, no site) runs under the coordinator's."""
    from fedglioma.synth import default_site_specs, site_subject_ids
    from tests.integration.tiny import REPO, TINY_CONFIG, write_tiny

    cfg = {**TINY_CONFIG, "cluster": {"coordinator_partition": "coord", "coordinator_account": "coord"},
           # one subject per site: the case checks where jobs run, and each generated subject costs seconds
           "demo": {**TINY_CONFIG["demo"], "subjects_per_site": 1, "external_subjects": 1}}
    extra = {s: {"slurm_partition": p, "slurm_account": a} for s, (p, a) in WORKFLOW_SITES.items() if s != "X"}
    workdir = write_tiny(tmp_path / "workflow", cfg, extra_columns=extra)
    targets = []
    for i, site in enumerate(("A", "B", "X")):
        sid = site_subject_ids(default_site_specs(3, cfg["demo"]["seed"])[i], i, 1)[0]
        targets.append(f"results/sites/{site}/labels.tsv")
        if site != "X":  # the external site's raw heads would add minutes; its scope is checked by labels
            targets.append(f"results/sites/{site}/prep/sub-{sid}_train.npz")

    def expected(rule: str, wildcards: str) -> tuple[str, str] | None:
        site = site_of(wildcards, WORKFLOW_SITES)
        return WORKFLOW_SITES[site] if site else TINY_COORDINATOR

    return WorkflowCase(
        "workflow",
        workdir,
        ["--snakefile", str(REPO / "Snakefile"), *targets],
        expected,
        rules={"template_transform", "synth_site", "labels", "preprocess_subject"},
        outputs=targets,
        min_jobs=9,
    )


CASES: dict[str, Callable[[Path], WorkflowCase]] = {"tiny": tiny_case, "workflow": workflow_case}


def rule_and_wildcards(comment: str, rules: set[str]) -> tuple[str, str]:
    """Split the plugin's job comment ``rule_<rule>[_wildcards_<values>]``."""
    assert comment.startswith("rule_"), f"unexpected job comment {comment!r}"
    body = comment[len("rule_") :]
    rule, _, wildcards = body.partition("_wildcards_")
    if rule not in rules:  # a rule name that itself contains "_wildcards_" is not expected
        raise AssertionError(f"job comment {comment!r} names no rule of {sorted(rules)}")
    return rule, wildcards


# ---- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case_name", list(CASES))
def test_site_jobs_run_under_site_partition_and_account(
    slurm_cluster: SlurmCluster, tmp_path: Path, case_name: str
) -> None:
    case = CASES[case_name](tmp_path)
    run = run_snakemake(slurm_cluster, case.workdir, case.args, timeout=WORKFLOW_TIMEOUT)
    assert run.returncode == 0, f"snakemake failed ({run.returncode}):\n{run.output[-8000:]}"
    print(f"\n{case.name}: workflow finished on SLURM in {run.seconds:.1f}s")
    for out in case.outputs:
        assert (case.workdir / out).exists(), f"missing output {out}"

    rows = slurm_cluster.jobs_in(case.workdir)
    assert len(rows) >= case.min_jobs, f"sacct shows {len(rows)} jobs from {case.workdir}:\n{rows}"
    seen: set[str] = set()
    problems = []
    for r in rows:
        rule, wildcards = rule_and_wildcards(r["Comment"], case.rules)
        seen.add(rule)
        if r["State"] != "COMPLETED":
            problems.append(f"job {r['JobID']} ({rule} {wildcards}) ended {r['State']}")
        want = case.expected(rule, wildcards)
        if want is not None and (r["Partition"], r["Account"]) != want:
            problems.append(
                f"job {r['JobID']} ({rule} {wildcards}) ran under partition/account "
                f"{r['Partition']}/{r['Account']}, expected {want[0]}/{want[1]}"
            )
    assert not problems, "\n".join(problems)
    assert case.rules <= seen, f"rules that never ran on SLURM: {sorted(case.rules - seen)}"


@pytest.mark.parametrize(
    ("bad", "scope", "messages"),
    [
        ("partition", ("no_such_partition", "acct_a"), ["Invalid partition name specified"]),
        # the plugin checks the account with sacctmgr before sbatch; sbatch itself would say
        # "Invalid account or account/partition combination specified"
        ("account", ("siteA", "no_such_account"), ["appears to be invalid", "Invalid account"]),
    ],
)
def test_unknown_partition_or_account_fails_at_submission(
    slurm_cluster: SlurmCluster, tmp_path: Path, bad: str, scope: tuple[str, str], messages: list[str]
) -> None:
    workdir = write_tiny_workflow(tmp_path / f"bad_{bad}", {"siteA": scope})
    run = run_snakemake(
        slurm_cluster, workdir, ["--snakefile", str(workdir / "Snakefile"), "out/siteA/prep.txt"], timeout=FAIL_TIMEOUT
    )
    assert run.returncode != 0, f"snakemake succeeded with an unknown {bad}:\n{run.output[-4000:]}"
    assert any(m in run.output for m in messages), (
        f"SLURM's message for the unknown {bad} ({' or '.join(messages)}) is not in the output:\n{run.output[-6000:]}"
    )
    assert not slurm_cluster.jobs_in(workdir, settle_s=0), f"a job with an unknown {bad} was accepted"
    assert run.seconds < FAIL_TIMEOUT / 2, f"failing took {run.seconds:.0f}s"
