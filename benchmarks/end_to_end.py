"""End to end: wall time of the demo workflow (what ``make demo`` runs after set-up), from an empty folder.

Copies ``config/config.yaml`` and ``config/sites.tsv`` (the demo paths) into a fresh working folder (default
``/tmp/bench_demo``) and runs::

    snakemake --snakefile Snakefile --directory /tmp/bench_demo --configfile /tmp/bench_demo/config/config.yaml \\
        --profile profiles/local --cores 2

recording wall and CPU seconds, the sampled peak RSS of the whole process tree, the number of jobs, and the
seconds per rule from the rules' ``benchmark:`` files. Only in the full suite (``run.py`` without ``--quick``).
With ``--update-docs`` the figure replaces the placeholder between ``<!-- e2e:begin -->`` and
``<!-- e2e:end -->`` in ``docs/benchmarks.md``.

Usage::

    python benchmarks/end_to_end.py --out /tmp/bench [--update-docs]
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "end_to_end"
DOCS = common.REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"


#: where the rules' ``benchmark:`` files may live, relative to the working folder (first found wins)
RULE_BENCH_DIRS = ("logs/benchmarks", "benchmarks", "results/benchmarks/rules")


def rule_seconds(work: Path) -> list[dict[str, Any]]:
    """Seconds per rule (sum, count and max of its jobs) from the rules' ``benchmark:`` TSV files."""
    per: dict[str, list[float]] = {}
    base = next((work / d for d in RULE_BENCH_DIRS if (work / d).is_dir()), work / RULE_BENCH_DIRS[0])
    for f in sorted(base.rglob("*.tsv")):
        rule = f.relative_to(base).parts[0]
        try:
            with open(f, newline="") as fh:
                for r in csv.DictReader(fh, delimiter="\t"):
                    per.setdefault(rule, []).append(float(r["s"]))
        except (OSError, KeyError, ValueError):
            continue
    rows = [{"rule": k, "jobs": len(v), "sum_s": round(sum(v), 1), "max_s": round(max(v), 1)} for k, v in per.items()]
    return sorted(rows, key=lambda r: -r["sum_s"])


def update_docs(text: str, docs: Path = DOCS) -> bool:
    """Replace the placeholder between the e2e markers of ``docs``; False when the markers are missing."""
    if not docs.is_file():
        return False
    s = docs.read_text()
    pat = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pat.search(s):
        return False
    docs.write_text(pat.sub(lambda _m: f"{BEGIN}\n{text}\n{END}", s))
    return True


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_demo"))
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml")
    ap.add_argument("--sites", type=Path, default=common.REPO / "config" / "sites.tsv")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=6 * 3600)
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--update-docs", action="store_true", help=f"write the figure into {DOCS}")
    ap.add_argument("--dry-run", action="store_true", help="only plan (snakemake -n): checks the set-up")
    a = ap.parse_args(argv)
    load0 = common.load_avg()
    work = a.work.resolve()
    if work == common.REPO or common.REPO in work.parents:
        raise SystemExit(f"--work must be outside the repository ({work})")
    shutil.rmtree(work, ignore_errors=True)
    (work / "config").mkdir(parents=True)
    shutil.copyfile(a.config, work / "config" / "config.yaml")
    shutil.copyfile(a.sites, work / "config" / "sites.tsv")
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / f"{NAME}.log"
    cmd = [common.BIN / "snakemake", "--snakefile", common.REPO / "Snakefile", "--directory", work, "--configfile",
           work / "config" / "config.yaml", "--profile", common.REPO / "profiles" / "local", "--cores", str(a.cores)] + (["-n"] if a.dry_run else [])
    print(f"[{NAME}] running the demo workflow in {work} (log {log})", flush=True)
    r = common.run_child(cmd, cwd=work, timeout=a.timeout, log=log, tree=True)
    text = log.read_text(errors="replace")
    m = re.search(r"^total\s+(\d+)", text, re.M)
    row = {"wall_s": r["wall_s"], "wall_min": round(r["wall_s"] / 60, 2), "cpu_s": r["cpu_s"],
           "tree_peak_mb": r.get("tree_peak_mb"), "jobs": int(m.group(1)) if m else None, "rc": r["rc"],
           "cores": a.cores, "load_before": load0[0], "load_after": common.load_avg()[0]}
    per_rule = rule_seconds(work)
    common.write_tsv(a.out / f"{NAME}_rules.tsv", per_rule)
    mach = common.machine()
    ok = r["rc"] == 0
    common.save(a.out, NAME, [row], [], {"work": str(work), "cores": a.cores, "config": str(a.config)}, load0,
                {"per_rule": per_rule})
    print(f"[{NAME}] rc {r['rc']}: {row['wall_min']} min wall, {round(r['cpu_s'] / 60, 1)} CPU min, "
          f"peak {row['tree_peak_mb']} MB, {row['jobs']} jobs", flush=True)
    if a.update_docs and ok and not a.dry_run:
        line = (f"Demo workflow end to end (what `make demo` runs after set-up, `--cores {a.cores}`): "
                f"**{row['wall_min']} min** wall, {round(r['cpu_s'] / 60, 1)} CPU min, {row['jobs']} jobs, peak "
                f"memory of the process tree {round((row['tree_peak_mb'] or 0) / 1024, 2)} GB; {mach['cpu']}, "
                f"{mach['cores']} cores, load average {load0[0]} before, {mach['time_utc']} "
                f"(`benchmarks/end_to_end.py`).")
        print(f"[{NAME}] docs updated: {update_docs(line)}", flush=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
