"""``fedglioma workflow audit-scope``: prove on the job DAG that site data stay in their site's scope.

The rule (docs/architecture.md): patient-level data of a site (raw images, labels, preprocessed
files, per-subject predictions) are read and written only by jobs of that site, i.e. jobs with
the ``site`` wildcard equal to that site, which run with that site's SLURM partition and
account when sites.tsv sets them. What may cross a site boundary is a short list of exports:
parameter updates and their sidecars, site-aggregated validation/evaluation metrics and
figures, cohort/QC summaries, and local-only baseline models.

The audit builds the DAG of a configuration through Snakemake's API (nothing runs) and checks
every job's inputs, outputs and resources. Jobs of rules listed in ``pooled_rules`` (the
centralized baseline, which pools data by definition) are reported, not failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Files under results/sites/{site}/ that a site may hand to the server or the report.
EXPORT_PATTERNS: tuple[str, ...] = (
    r"federated/round-\d+/update\.(safetensors|json)",
    r"federated/round-\d+/validation\.json",
    r"summary\.json",
    r"qc/qc_summary\.json",
    r"qc/site_example\.png",
    r"demo_example\.png",
    r"evaluation/[^/]+/metrics\.json",
    r"evaluation/[^/]+/figures",
    r"evaluation/comparison\.tsv",
    r"baselines/local_only/round-\d+/(model\.safetensors|model\.json|validation\.json)",
    r"baselines/local_only/final\.json",
)

#: Rules that only name the workflow's targets and run nothing.
TARGET_RULES: tuple[str, ...] = ("all",)

#: Rules allowed to read several sites' private data (reported, not failed).
POOLED_RULES: tuple[str, ...] = ("centralized_train",)


@dataclass(frozen=True)
class JobView:
    """What the audit needs of one job."""

    rule: str
    wildcards: Mapping[str, str]
    inputs: Sequence[str]
    outputs: Sequence[str]
    resources: Mapping[str, Any]
    #: What the job's entry sees (``params``, ``input``, ``output``, ``wildcards``: name -> value; ``threads``),
    #: for checking that every rule names what its step function takes (:func:`fedglioma.registry.rule_kwargs`).
    named: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class AuditResult:
    violations: list[str] = field(default_factory=list)
    pooled: list[str] = field(default_factory=list)
    n_jobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


def _owner(path: str, site_roots: Mapping[str, Sequence[str]]) -> tuple[str | None, bool]:
    """Return (site owning ``path`` or None, whether it is an export of that site)."""
    norm = path.replace("\\", "/").lstrip("./")
    for site, roots in site_roots.items():
        prefix = f"results/sites/{site}/"
        if norm.startswith(prefix):
            rest = norm[len(prefix):]
            return site, any(re.fullmatch(p, rest) for p in EXPORT_PATTERNS)
        for root in roots:
            r = root.replace("\\", "/").lstrip("./").rstrip("/")
            if r and (norm == r or norm.startswith(r + "/")):
                return site, False
    return None, False


def audit_jobs(
    jobs: Iterable[JobView],
    site_roots: Mapping[str, Sequence[str]],
    site_resources: Mapping[str, Mapping[str, str]],
    pooled_rules: Sequence[str] = POOLED_RULES,
) -> AuditResult:
    """Check every job against the scope rule.

    ``site_roots`` maps each site to the folders holding its raw data (outside results/sites);
    ``site_resources`` maps each site to the resources its jobs must carry (e.g. slurm_account).
    """
    res = AuditResult()
    for job in jobs:
        res.n_jobs += 1
        if job.rule in TARGET_RULES:
            continue  # it runs nothing: it names the final targets (a predict site's private table among them)
        site = job.wildcards.get("site")
        name = f"{job.rule}[{', '.join(f'{k}={v}' for k, v in job.wildcards.items())}]"
        private: dict[str, set[str]] = {}
        for f in [*job.inputs, *job.outputs]:
            owner, export = _owner(str(f), site_roots)
            if owner is None:
                continue
            if f in job.outputs and owner == site:
                continue  # a site job writing in its own scope
            if not export or f in job.outputs:
                private.setdefault(owner, set()).add(str(f))
        foreign = {s: fs for s, fs in private.items() if s != site}
        if foreign:
            detail = "; ".join(f"site {s}: {sorted(fs)[0]}" + (f" (+{len(fs) - 1} more)" if len(fs) > 1 else "")
                               for s, fs in sorted(foreign.items()))
            if job.rule in pooled_rules:
                res.pooled.append(f"{name} pools private data of {len(foreign)} site(s) (baseline by design)")
            else:
                res.violations.append(f"{name} touches another scope's private data: {detail}")
        if site is not None:
            for key, want in site_resources.get(site, {}).items():
                if want and str(job.resources.get(key, "")) != want:
                    res.violations.append(
                        f"{name} runs with {key}={job.resources.get(key, '')!r}, expected site {site}'s {want!r}"
                    )
            for f in job.outputs:
                if str(f).startswith("results/") and not str(f).startswith(f"results/sites/{site}/") and \
                        _owner(str(f), site_roots)[0] != site:
                    res.violations.append(f"{name} writes outside its site's folder: {f}")
    return res


def dag_jobs(snakefile: Path, configfiles: Sequence[Path] = (), config: Mapping[str, Any] | None = None,
             workdir: Path | None = None) -> tuple[list[JobView], dict[str, Any]]:
    """Build the DAG of a workflow (forceall, nothing runs) and return its jobs and the config."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        wf_api = api.workflow(
            snakefile=snakefile,
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=list(configfiles), config=dict(config or {})),
            storage_settings=StorageSettings(),
            workflow_settings=WorkflowSettings(),
            workdir=workdir,
        )
        dag_api = wf_api.dag(dag_settings=DAGSettings(forceall=True))
        wf = dag_api.workflow_api._workflow  # the public API has no job iterator
        wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        built = wf._build_dag()
        if asyncio.iscoroutine(built):
            asyncio.run(built)
        jobs = [
            JobView(
                rule=j.rule.name,
                wildcards=dict(j.wildcards),
                inputs=[str(f) for f in j.input],
                outputs=[str(f) for f in j.output] + [str(f) for f in j.log],
                resources={k: v for k, v in dict(j.resources).items() if not k.startswith("_")},
                named={"rule": j.rule.name, "threads": j.threads,
                       **{src: dict(getattr(j, src).items()) for src in ("params", "input", "output", "wildcards")}},
            )
            for j in wf.dag.jobs
        ]
        return jobs, dict(wf.config)


def audit_workflow(snakefile: Path, configfiles: Sequence[Path] = (), workdir: Path | None = None) -> AuditResult:
    """Audit the DAG of a workflow configuration."""
    from fedglioma.config import load_sites

    jobs, config = dag_jobs(snakefile, configfiles, workdir=workdir)
    base = workdir or Path.cwd()
    rows = load_sites(base / config["sites"])
    roots: dict[str, list[str]] = {}
    for r in rows:
        roots[r.site] = [r.path]
        if r.clinical:
            roots[r.site].append(r.clinical)
    resources = {r.site: {"slurm_partition": r.slurm_partition, "slurm_account": r.slurm_account} for r in rows}
    return audit_jobs(jobs, roots, resources)


def _main(args: argparse.Namespace) -> int:
    res = audit_workflow(Path(args.snakefile).resolve(), [Path(c).resolve() for c in args.configfile],
                         Path(args.directory).resolve() if args.directory else None)
    for line in res.pooled:
        print(f"note: {line}")
    for line in res.violations:
        print(f"VIOLATION: {line}")
    print(f"{res.n_jobs} jobs audited, {len(res.violations)} violation(s)")
    return 0 if res.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit-scope",
        help="prove on the job DAG that each site's data stay in that site's jobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--snakefile", default="Snakefile")
    p.add_argument("--configfile", action="append", default=[], help="config file(s) (default: the Snakefile's)")
    p.add_argument("--directory", default=None, help="working directory of the workflow")
    p.set_defaults(func=_main)
