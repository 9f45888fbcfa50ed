"""Quality: external median Dice and AUCs of federated (FedAvg, FedProx), centralized and local-only models.

Runs the real workflow on the benchmark cohort (``config/config.yaml`` overridden by ``config/benchmark.yaml``:
5 training sites x 8 synthetic subjects + 16 external, 5 rounds, both baselines) for each seed (``train.seed``) and
strategy (``federated.strategy``)::

    snakemake --snakefile Snakefile --directory WORK --profile profiles/local --cores 2 \\
        --configfile config/config.yaml config/benchmark.yaml WORK/config/run.yaml

and collects ``WORK/results/sites/<external>/evaluation/comparison.tsv`` after each run (copied to
``OUT/quality/seed-<N>_<strategy>_comparison.tsv``). All runs share one working folder: the cohort and its
preprocessing do not depend on the seed or the strategy, so Snakemake re-runs only the jobs whose parameters
changed (training, evaluation; the baselines only when the seed changes). The strategy of each run is checked in
the final global model's sidecar.

Per run: federated / centralized for median Dice and for the mean of the four AUCs (IDH, 1p/19q, MGMT,
grade 4 vs 2-3), and federated minus the best local-only model. Targets (medians over seeds, per strategy):
ratios >= 0.97; federated above the best local-only model for Dice and for mean AUC.

About 90 minutes on 2 cores (56 subjects to preprocess, 16 of them raw exams through the whole chain, then 3 seeds
x 2 strategies of training); ``--dry-run`` only plans every run (``snakemake -n``).

Usage::

    python benchmarks/quality.py --dry-run --out /tmp/bench
    python benchmarks/quality.py --seeds 1 2 3 --strategies fedavg fedprox
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

NAME = "quality"
AUCS = ("auc:idh", "auc:codeletion", "auc:mgmt", "auc:grade")


def run_config(work: Path, seed: int, strategy: str) -> Path:
    """The per-run overrides (seed, strategy) as a config file under ``work/config``."""
    p = work / "config" / "run.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"train:\n  seed: {seed}\nfederated:\n  strategy: {strategy}\n")
    return p


def snakemake_cmd(work: Path, configs: list[Path], cores: int, dry_run: bool) -> list[str]:
    cmd = [str(common.BIN / "snakemake"), "--snakefile", str(common.REPO / "Snakefile"), "--directory", str(work),
           "--profile", str(common.REPO / "profiles" / "local"), "--cores", str(cores),
           "--configfile", *map(str, configs)]
    return cmd + (["-n", "--quiet", "rules"] if dry_run else ["--rerun-incomplete"])


def read_comparison(path: Path) -> dict[str, dict[str, float]]:
    """``{model: {key: value}}`` from a comparison.tsv (``key`` column, one column per model)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    models = [c for c in (rows[0] if rows else {}) if c in ("federated", "centralized") or
              (c.startswith("local-") and not re.search(r"_(low|high|n)$", c))]
    out: dict[str, dict[str, float]] = {m: {} for m in models}
    for r in rows:
        for m in models:
            try:
                out[m][r["key"]] = float(r[m])
            except (TypeError, ValueError):
                out[m][r["key"]] = math.nan
    return out


def scores(table: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Dice, the four AUCs and their mean per model; federated/centralized ratios; margins to the best local."""

    def mean_auc(m: dict[str, float]) -> float:
        v = [m.get(k, math.nan) for k in AUCS]
        v = [x for x in v if math.isfinite(x)]
        return sum(v) / len(v) if v else math.nan

    per = {name: {"dice_median": m.get("dice_median", math.nan), **{k: m.get(k, math.nan) for k in AUCS},
                  "mean_auc": mean_auc(m)} for name, m in table.items()}
    fed, cen = per.get("federated", {}), per.get("centralized", {})
    local = {k: v for k, v in per.items() if k.startswith("local-")}
    res: dict[str, Any] = {"models": per}
    for key in ("dice_median", "mean_auc"):
        f, c = fed.get(key, math.nan), cen.get(key, math.nan)
        res[f"ratio_{key}"] = f / c if c and math.isfinite(c) else math.nan
        best = max((v[key] for v in local.values() if math.isfinite(v[key])), default=math.nan)
        res[f"best_local_{key}"] = best
        res[f"margin_{key}"] = f - best
    return res


TABLE_KEYS = (("dice_median", "median Dice (IQR)"), ("auc:idh", "AUC IDH"),
              ("auc:codeletion", "AUC 1p/19q (IDH-mutant)"), ("auc:mgmt", "AUC MGMT"),
              ("auc:grade", "AUC grade 4 vs 2-3"))


def _cell(row: dict[str, str], model: str) -> str:
    try:
        v, lo, hi = (float(row[f"{model}{s}"]) for s in ("", "_low", "_high"))
    except (KeyError, TypeError, ValueError):
        return "n/a"
    return f"{v:.2f} ({lo:.2f}-{hi:.2f})" if math.isfinite(v) else "n/a"


def markdown_table(keep: Path) -> str:
    """One row per run and model (federated, centralized, the best local-only by median Dice) from the copied
    comparison tables: median Dice with its IQR and each AUC with its 95% bootstrap CI, then the ratios."""
    lines = ["| run | model | " + " | ".join(h for _, h in TABLE_KEYS) + " | mean AUC |",
             "|---|---|" + "---:|" * (len(TABLE_KEYS) + 1)]
    for comp in sorted(keep.glob("seed-*_comparison.tsv")):
        tag = comp.name.removesuffix("_comparison.tsv")
        with open(comp, newline="") as f:
            rows = {r["key"]: r for r in csv.DictReader(f, delimiter="\t")}
        table = read_comparison(comp)
        sc = scores(table)
        local = [m for m in table if m.startswith("local-")]
        best = max(local, key=lambda m: table[m].get("dice_median", -1.0), default=None)
        for model in ("federated", "centralized", *([best] if best else [])):
            label = f"{model} (best local-only)" if model == best else model
            cells = [_cell(rows.get(k, {}), model) for k, _ in TABLE_KEYS]
            lines.append(f"| {tag} | {label} | " + " | ".join(cells) +
                         f" | {sc['models'][model]['mean_auc']:.2f} |")
        lines.append(f"| {tag} | federated / centralized | {sc['ratio_dice_median']:.3f} |" + " |" * (len(AUCS))
                     + f" {sc['ratio_mean_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml")
    ap.add_argument("--bench-config", type=Path, default=common.REPO / "config" / "benchmark.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--strategies", nargs="+", default=["fedavg", "fedprox"])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="working folder of the runs (default OUT/quality_work)")
    ap.add_argument("--dry-run", action="store_true", help="only plan every run (snakemake -n)")
    ap.add_argument("--timeout", type=float, default=24 * 3600, help="seconds per run")
    ap.add_argument("--table-only", action="store_true",
                    help="only render OUT/quality/quality_table.md from the comparison tables already there")
    a = ap.parse_args(argv)
    if a.table_only:
        text = markdown_table(a.out / NAME)
        (a.out / NAME / "quality_table.md").write_text(text)
        print(text, end="")
        return 0
    load0 = common.load_avg()
    work = (a.work or (a.out / "quality_work")).resolve()
    (work / "config").mkdir(parents=True, exist_ok=True)
    import yaml

    bench = yaml.safe_load(a.bench_config.read_text()) or {}
    sites = Path(bench.get("sites", "config/benchmark_sites.tsv"))
    shutil.copyfile(sites if sites.is_absolute() else common.REPO / sites, work / sites)
    with open(work / sites, newline="") as f:
        external = next(r["site"] for r in csv.DictReader(f, delimiter="\t") if r["role"] == "external")
    keep = a.out / NAME
    keep.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in a.seeds:
        for strategy in a.strategies:
            tag = f"seed-{seed}_{strategy}"
            cmd = snakemake_cmd(work, [a.config, a.bench_config, run_config(work, seed, strategy)], a.cores,
                                a.dry_run)
            load = common.load_avg()[0]
            r = common.run_child(cmd, cwd=work, timeout=a.timeout,
                                 log=keep / f"{tag}.log", tree=not a.dry_run)
            row: dict[str, Any] = {"seed": seed, "strategy": strategy, "rc": r["rc"], "wall_s": r["wall_s"],
                                   "cpu_s": r["cpu_s"], "tree_peak_mb": r.get("tree_peak_mb"), "load1": load,
                                   "dry_run": a.dry_run}
            text = (keep / f"{tag}.log").read_text(errors="replace")
            m = re.search(r"^total\s+(\d+)", text, re.M)
            row["jobs"] = int(m.group(1)) if m else None
            if r["rc"] == 0 and not a.dry_run:
                comp = work / "results" / "sites" / external / "evaluation" / "comparison.tsv"
                shutil.copyfile(comp, keep / f"{tag}_comparison.tsv")
                rounds = sorted(work.glob("results/federated/round-*/global.json"),
                                key=lambda p: int(p.parent.name.split("-")[1]))
                row["strategy_check"] = json.loads(rounds[-1].read_text()).get("strategy") if rounds else None
                s = scores(read_comparison(comp))
                row.update({k: common.rnd(v, 4) for k, v in s.items() if k != "models"})
                row["models"] = {k: {kk: common.rnd(vv, 4) for kk, vv in v.items()} for k, v in s["models"].items()}
            runs.append(row)
            print(f"[{NAME}] {tag}: rc {r['rc']} in {r['wall_s']:.0f} s ({row.get('jobs')} jobs planned)"
                  + ("" if a.dry_run else f", Dice ratio {row.get('ratio_dice_median')}, "
                     f"AUC ratio {row.get('ratio_mean_auc')}"), flush=True)
            if r["rc"] != 0:
                raise SystemExit(f"run {tag} failed (rc {r['rc']}), see {keep / (tag + '.log')}")
    targets = []
    summary = []
    for strategy in a.strategies:
        rs = [r for r in runs if r["strategy"] == strategy and "ratio_dice_median" in r]
        med = {k: common.median(r[k] for r in rs if r.get(k) is not None and math.isfinite(r[k]))
               for k in ("ratio_dice_median", "ratio_mean_auc", "margin_dice_median", "margin_mean_auc")}
        summary.append({"strategy": strategy, "n_seeds": len(rs), **{k: common.rnd(v, 4) for k, v in med.items()}})
        note = "not run (dry run)" if a.dry_run else ""
        targets += [
            common.target(NAME, f"{strategy}: federated / centralized, external median Dice",
                          med["ratio_dice_median"], ">=", 0.97, "x", note),
            common.target(NAME, f"{strategy}: federated / centralized, mean of 4 AUCs", med["ratio_mean_auc"], ">=",
                          0.97, "x", note),
            common.target(NAME, f"{strategy}: federated - best local-only, median Dice", med["margin_dice_median"],
                          ">", 0.0, "", note),
            common.target(NAME, f"{strategy}: federated - best local-only, mean AUC", med["margin_mean_auc"], ">", 0.0,
                          "", note),
        ]
    common.save(a.out, NAME, [{k: v for k, v in r.items() if k != "models"} for r in runs], targets,
                {"seeds": a.seeds, "strategies": a.strategies, "cores": a.cores, "work": str(work),
                 "dry_run": a.dry_run, "config": [str(a.config), str(a.bench_config)]},
                load0, {"summary": summary, "models": {f"seed-{r['seed']}_{r['strategy']}": r.get("models")
                                                       for r in runs}})
    if not a.dry_run:
        (keep / "quality_table.md").write_text(markdown_table(keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
