"""Privacy: the utility cost of patient-level DP-SGD (train.privacy) on the demo's federated arm.

Runs the demo workflow (``config/config.yaml``, ``config/sites.tsv``: the demo cohort) with the baselines off, once
per target epsilon (``train.privacy.target_epsilon``; delta 1/(10 n) of each site; ``max_grad_norm`` from
``--max-grad-norm``; the RDP accountant) and once without DP::

    snakemake --snakefile Snakefile --directory WORK --profile profiles/local --cores 2 \\
        --configfile config/config.yaml WORK/config/run.yaml

All runs share one working folder: the cohort and its preprocessing do not depend on the privacy settings, so
Snakemake reruns only training, evaluation and the report. Each site's DP key (``dp_noise.key`` beside its
rounds) is kept between runs. After each run the script reads the external site's federated ``metrics.json``
(median Dice, AUCs of IDH, 1p/19q, MGMT, grade 4 vs 2-3) and ``results/federated/training_curves.tsv`` (the
epsilon and delta each site spent after its last round), and writes ``OUT/privacy/privacy_table.md``: one row per
setting with external median Dice, mean AUC and the largest spent epsilon over the sites.

About an hour on 2 cores (the demo's preprocessing once, then 4 trainings of 5 rounds); ``--dry-run`` only plans
every run (``snakemake -n``).

Usage::

    python benchmarks/privacy.py --dry-run --out /tmp/bench
    python benchmarks/privacy.py --epsilons 1 3 8 off
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "privacy"
MARKERS = ("idh", "codeletion", "mgmt", "grade")


def run_config(work: Path, epsilon: str, max_grad_norm: float) -> Path:
    """The per-run overrides (baselines off; DP at ``epsilon``, or off) as a config file under ``work/config``."""
    p = work / "config" / "run.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    dp = ("  privacy: {enabled: false}\n" if epsilon == "off" else
          f"  privacy: {{enabled: true, target_epsilon: {float(epsilon)}, max_grad_norm: {max_grad_norm}, "
          f"accountant: rdp}}\n")
    p.write_text("baselines: {centralized: false, local_only: false}\ntrain:\n" + dp)
    return p


def snakemake_cmd(work: Path, configs: list[Path], cores: int, dry_run: bool) -> list[str]:
    cmd = [str(common.BIN / "snakemake"), "--snakefile", str(common.REPO / "Snakefile"), "--directory", str(work),
           "--profile", str(common.REPO / "profiles" / "local"), "--cores", str(cores),
           "--configfile", *map(str, configs)]
    return cmd + (["-n", "--quiet", "rules"] if dry_run else ["--rerun-incomplete"])


def utility(metrics: dict[str, Any]) -> dict[str, float]:
    """External median Dice, each marker's AUC and their mean from a federated ``metrics.json``."""
    seg = metrics.get("segmentation") or {}
    dice = float(seg["dice"]["median"]) if seg.get("estimable") else math.nan
    aucs = {}
    for m in MARKERS:
        res = (metrics.get("markers") or {}).get(m) or {}
        aucs[f"auc_{m}"] = float(res["auc"]) if res.get("estimable") and res.get("auc") is not None else math.nan
    finite = [v for v in aucs.values() if math.isfinite(v)]
    return {"dice_median": dice, **aucs, "mean_auc": sum(finite) / len(finite) if finite else math.nan}


def spent(curves: Path) -> dict[str, float]:
    """The largest epsilon any site spent after its last round, and its delta (NaN without DP)."""
    with open(curves, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    last: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["site"] not in last or int(r["round"]) > int(last[r["site"]]["round"]):
            last[r["site"]] = r
    eps = [(float(r["epsilon"]), float(r["delta"])) for r in last.values() if r.get("epsilon")]
    if not eps:
        return {"epsilon_spent_max": math.nan, "delta": math.nan}
    e, d = max(eps)
    return {"epsilon_spent_max": e, "delta": d}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per setting: target and spent epsilon, delta, external median Dice, the AUCs and their mean."""
    def f(v: Any, p: int = 3) -> str:
        return f"{v:.{p}g}" if isinstance(v, float) and math.isfinite(v) else "n/a"

    lines = ["| target epsilon | spent epsilon (max over sites) | delta | median Dice | AUC IDH | AUC 1p/19q | "
             "AUC MGMT | AUC grade | mean AUC |", "|---|" + "---:|" * 8]
    for r in rows:
        lines.append(f"| {r['epsilon']} | {f(r.get('epsilon_spent_max'))} | {f(r.get('delta'), 2)} | "
                     f"{f(r.get('dice_median'))} | " + " | ".join(f(r.get(f'auc_{m}')) for m in MARKERS)
                     + f" | {f(r.get('mean_auc'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml")
    ap.add_argument("--epsilons", nargs="+", default=["1", "3", "8", "off"],
                    help="target epsilons of train.privacy, 'off' for a run without DP")
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="working folder of the runs (default OUT/privacy_work)")
    ap.add_argument("--dry-run", action="store_true", help="only plan every run (snakemake -n)")
    ap.add_argument("--timeout", type=float, default=24 * 3600, help="seconds per run")
    a = ap.parse_args(argv)
    for e in a.epsilons:
        if e != "off" and not (re.fullmatch(r"[0-9.]+", e) and float(e) > 0):
            ap.error(f"--epsilons: {e!r} is neither a positive number nor 'off'")
    load0 = common.load_avg()
    work = (a.work or (a.out / "privacy_work")).resolve()
    (work / "config").mkdir(parents=True, exist_ok=True)
    import yaml

    cfg = yaml.safe_load(a.config.read_text()) or {}
    sites = Path(cfg.get("sites", "config/sites.tsv"))
    shutil.copyfile(sites if sites.is_absolute() else common.REPO / sites, work / sites)
    with open(work / sites, newline="") as f:
        external = next(r["site"] for r in csv.DictReader(f, delimiter="\t") if r["role"] == "external")
    keep = a.out / NAME
    keep.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for eps in a.epsilons:
        tag = f"epsilon-{eps}"
        cmd = snakemake_cmd(work, [a.config, run_config(work, eps, a.max_grad_norm)], a.cores, a.dry_run)
        load = common.load_avg()[0]
        r = common.run_child(cmd, cwd=work, timeout=a.timeout, log=keep / f"{tag}.log", tree=not a.dry_run)
        row: dict[str, Any] = {"epsilon": eps, "rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                               "tree_peak_mb": r.get("tree_peak_mb"), "load1": load, "dry_run": a.dry_run}
        text = (keep / f"{tag}.log").read_text(errors="replace")
        m = re.search(r"^total\s+(\d+)", text, re.M)
        row["jobs"] = int(m.group(1)) if m else None
        if r["rc"] == 0 and not a.dry_run:
            metrics = work / "results" / "sites" / external / "evaluation" / "federated" / "metrics.json"
            curves = work / "results" / "federated" / "training_curves.tsv"
            shutil.copyfile(metrics, keep / f"{tag}_metrics.json")
            shutil.copyfile(curves, keep / f"{tag}_training_curves.tsv")
            row.update({k: common.rnd(v, 4) for k, v in utility(json.loads(metrics.read_text())).items()})
            row.update({k: common.rnd(v, 6) for k, v in spent(curves).items()})
        rows.append(row)
        print(f"[{NAME}] {tag}: rc {r['rc']} in {r['wall_s']:.0f} s ({row.get('jobs')} jobs planned)"
              + ("" if a.dry_run else f", median Dice {row.get('dice_median')}, mean AUC {row.get('mean_auc')}, "
                 f"spent epsilon {row.get('epsilon_spent_max')}"), flush=True)
        if r["rc"] != 0:
            raise SystemExit(f"run {tag} failed (rc {r['rc']}), see {keep / (tag + '.log')}")
    note = "not run (dry run)" if a.dry_run else ""
    targets = [common.target(NAME, f"spent epsilon <= target {r['epsilon']}", r.get("epsilon_spent_max"), "<=",
                             float(r["epsilon"]), "", note) for r in rows if r["epsilon"] != "off"]
    common.save(a.out, NAME, rows, targets,
                {"epsilons": a.epsilons, "max_grad_norm": a.max_grad_norm, "cores": a.cores, "work": str(work),
                 "dry_run": a.dry_run, "config": str(a.config)}, load0, {})
    if not a.dry_run:
        (keep / "privacy_table.md").write_text(markdown_table(rows))
        print(markdown_table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
