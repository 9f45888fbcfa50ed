"""Workflow scale: seconds (and peak memory) for ``snakemake -n`` to plan a cohort of the paper's size.

Cohort: 1,552 training subjects over 5 sites + 466 external subjects (``--train-subjects``, ``--external``), 100
federated rounds (``--rounds``), baselines on (centralized and local-only: the largest plan), ``demo.enabled:
false``. The sites are real-layout folders of EMPTY placeholder files (``brats2021``:
``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``; discovery only looks at file names) plus a
clinical table per site, in a scratch folder. The planning run is::

    snakemake --snakefile Snakefile --directory WORK --configfile WORK/config/config.yaml -n --cores 2

run in-process under this suite's ``VmHWM`` wrapper (``common.py --peak-json``), repeated; medians reported.
Two more plans (full suite only) show where the time goes: the paper's cohort with a tenth of the rounds, and
a small cohort (``--small`` training subjects, default a tenth) with all rounds. Quick: the paper plan only, twice.

Usage::

    python benchmarks/workflow_scale.py --quick --out /tmp/bench
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "workflow_scale"
TRAIN_SITES = ("SiteA", "SiteB", "SiteC", "SiteD", "SiteE")
FILES = ("t1", "t1ce", "t2", "flair", "seg")
HEADER = "site\trole\tlayout\tpath\tclinical\ttumour_labels\tskull_stripped\tspace\tslurm_partition\tslurm_account\n"


def split(n: int, k: int) -> list[int]:
    """``n`` subjects over ``k`` sites, as evenly as possible."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def make_cohort(work: Path, train_subjects: int, external: int, rounds: int, config: Path,
                baselines: bool = True) -> dict[str, Any]:
    """Placeholder sites, clinical tables, sites.tsv and config.yaml under ``work``."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    sites = list(zip(TRAIN_SITES, split(train_subjects, len(TRAIN_SITES)), strict=True)) + [("External", external)]
    rows = []
    n_files = 0
    for si, (site, n) in enumerate(sites):
        d = work / "data" / site
        d.mkdir(parents=True, exist_ok=True)
        lines = ["subject\tIDH\t1p19q\tMGMT\tgrade"]
        for i in range(n):
            sid = f"BraTS2021_{(si + 1) * 10000 + i:05d}"
            s = d / sid
            s.mkdir(exist_ok=True)
            for f in FILES:
                (s / f"{sid}_{f}.nii.gz").touch()
                n_files += 1
            mutant = i % 3 == 0
            lines.append(f"{sid}\t{'mutant' if mutant else 'wildtype'}\t{'intact' if mutant else ''}\t"
                         f"{'methylated' if i % 2 else 'unmethylated'}\t{2 + i % 3}")
        (d / "clinical.tsv").write_text("\n".join(lines) + "\n")
        role = "external" if site == "External" else "train"
        rows.append(f"{site}\t{role}\tbrats2021\tdata/{site}\tdata/{site}/clinical.tsv\t1,2,4\tno\tnative\t\t\n")
    (work / "config").mkdir(exist_ok=True)
    (work / "config" / "sites.tsv").write_text(HEADER + "".join(rows))
    cfg = yaml.safe_load(config.read_text())
    cfg["sites"] = "config/sites.tsv"
    cfg.setdefault("demo", {})["enabled"] = False
    cfg.setdefault("federated", {})["rounds"] = rounds
    cfg["baselines"] = {"centralized": baselines, "local_only": baselines}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return {"sites": {s: n for s, n in sites}, "placeholder_files": n_files, "rounds": rounds,
            "baselines": baselines}


def plan(work: Path, timeout: float, log: Path) -> dict[str, Any]:
    """One ``snakemake -n`` of the workflow in ``work``: wall, peak RSS, number of planned jobs."""
    r = common.run_script_measured(
        common.BIN / "snakemake",
        ["--snakefile", str(common.REPO / "Snakefile"), "--directory", str(work), "--configfile",
         str(work / "config" / "config.yaml"), "-n", "--cores", "2", "--quiet", "rules"],
        env=common.thread_env(2), cwd=work, timeout=timeout, log=log)
    text = log.read_text(errors="replace") if log.is_file() else ""
    m = re.search(r"^total\s+(\d+)", text, re.M)
    r["jobs"] = int(m.group(1)) if m else None
    if r["rc"] != 0:
        raise SystemExit(f"snakemake -n failed (rc {r['rc']}), see {log}:\n{text[-3000:]}")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml")
    ap.add_argument("--train-subjects", type=int, default=1552)
    ap.add_argument("--external", type=int, default=466)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--small", type=int, default=None,
                    help="training subjects of the small comparison cohort (default train/10; 0 = none)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/workflow_work)")
    a = ap.parse_args(argv)
    load0 = common.load_avg()
    reps = a.reps or (2 if a.quick else 3)
    work = a.work or (a.out / "workflow_work")
    shutil.rmtree(work, ignore_errors=True)
    small = (0 if a.quick else a.train_subjects // 10) if a.small is None else a.small
    # name: (training subjects, external subjects, rounds)
    cohorts = {"paper": (a.train_subjects, a.external, a.rounds)}
    if small:
        cohorts["paper_10rounds"] = (a.train_subjects, a.external, max(1, a.rounds // 10))
        cohorts["small"] = (small, max(1, round(a.external * small / a.train_subjects)), a.rounds)
    facts = {}
    for name, (n_train, n_ext, n_rounds) in cohorts.items():
        facts[name] = make_cohort(work / name, n_train, n_ext, n_rounds, a.config, baselines=not a.no_baselines)
    rows = []
    for rep in range(reps):
        k = rep % len(cohorts)
        for name in list(cohorts)[k:] + list(cohorts)[:k]:
            load = common.load_avg()[0]
            r = plan(work / name, a.timeout, a.out / f"{NAME}_{name}.log")
            n_sub = sum(facts[name]["sites"].values())
            rows.append({"cohort": name, "subjects": n_sub, "rounds": facts[name]["rounds"], "rep": rep, "jobs": r["jobs"],
                         "wall_s": r["wall_s"], "inner_s": r.get("inner_s"), "cpu_s": r["cpu_s"],
                         "peak_rss_mb": r.get("peak_rss_mb"), "load1": load})
            print(f"[{NAME}] rep {rep} {name}: {n_sub} subjects, {r['jobs']} jobs planned in {r['wall_s']:.1f} s, "
                  f"{r.get('peak_rss_mb')} MB (load {load})", flush=True)
    summary = []
    for name in cohorts:
        rs = [r for r in rows if r["cohort"] == name]
        summary.append({"cohort": name, "subjects": rs[0]["subjects"], "train_subjects": cohorts[name][0],
                        "external_subjects": cohorts[name][1], "rounds": cohorts[name][2], "jobs": rs[0]["jobs"],
                        "n_reps": len(rs), "wall_s": common.rnd(common.median(r["wall_s"] for r in rs), 1),
                        "wall_s_max": max(r["wall_s"] for r in rs),
                        "cpu_s": common.rnd(common.median(r["cpu_s"] for r in rs), 1),
                        "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rs)})
    paper = summary[0]
    targets = [common.target(NAME, f"snakemake -n, {paper['subjects']} subjects, {a.rounds} rounds "
                             f"({paper['jobs']} jobs)", paper["wall_s"], "<", 30.0, "s")]  # issue 15: < 30 s, aiming at 10
    common.save(a.out, NAME, summary, targets, {"reps": reps, "cohorts": facts, "quick": a.quick}, load0,
                {"runs": rows})
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
