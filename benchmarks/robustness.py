"""Robustness and privacy: the federated arm of the demo under a simulated attacker, per aggregation rule, and
under patient-level DP-SGD at several epsilons (docs/benchmarks.md, section 10).

Two matrices of settings, each run through the real workflow (one ``snakemake`` per setting, the federated arm
only: baselines off, the external site's federated ``metrics.json`` as the target):

- ``attacks``: attack in {none, sign_flip, scale (x10), noise (x10 the update's RMS)} from one training site (the
  first of sites.tsv) x defence in {fedavg, median, trimmed_mean (0.1: one site trimmed at each end of five),
  fedavg + update-norm bound (k=3, clip), multi_krum (f=1: keeps four of five), fedavg + direction check (cosine
  0) + norm bound (k=3, clip)};
- ``privacy``: ``train.privacy`` at target epsilon in {1, 3, 8} and off (delta 1/(10 n) per site, clipping norm
  1.0, RDP accountant).

To measure the training and not the preprocessing, ``--from-results DIR`` hard-links a finished demo's
``results/`` (``make demo``) into the working folder, and every run uses ``--rerun-triggers mtime --forcerun
init_model``: Snakemake retrains the federation from round 0 and re-evaluates it, and leaves the preprocessing
alone. Without it the first run preprocesses the cohort (about 25 minutes on 2 cores). ``--rounds`` and
``--epochs`` shorten the schedule (the tables say which one was used).

Writes ``OUT/robustness/<matrix>_table.md`` (external median Dice, mean AUC, and for attacks the change against
the clean run of the same defence and against clean FedAvg; for privacy the largest spent epsilon), the copied
``metrics.json`` and training tables per setting, and the usual ``robustness.tsv/json``.

Usage::

    python benchmarks/robustness.py --from-results results --rounds 3 --epochs 2
    python benchmarks/robustness.py --matrix privacy --epsilons 1 8 off --dry-run
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "robustness"
MARKERS = ("idh", "codeletion", "mgmt", "grade")
ATTACKS = ("none", "sign_flip", "scale", "noise")
DEFENCES = {
    "fedavg": {"strategy": "fedavg"},
    "median": {"strategy": "median"},
    "trimmed_mean": {"strategy": "trimmed_mean", "trim_fraction": 0.1},
    "fedavg+norm_clip": {"strategy": "fedavg", "update_norm_bound": 3.0, "update_norm_action": "clip"},
    "multi_krum": {"strategy": "multi_krum", "krum_byzantine": 1},
    "fedavg+direction+norm_clip": {"strategy": "fedavg", "update_min_cosine": 0.0, "update_norm_bound": 3.0,
                                   "update_norm_action": "clip"},
}


def settings(matrix: str, epsilons: list[str], attacker: str) -> list[dict[str, Any]]:
    """The runs of a matrix: ``tag``, the config overrides, and the table keys."""
    runs: list[dict[str, Any]] = []
    if matrix in ("attacks", "all"):
        for attack in ATTACKS:
            for defence, fed in DEFENCES.items():
                over = {"federated": dict(fed),
                        "attack": {"site": None if attack == "none" else attacker,
                                   "kind": "sign_flip" if attack == "none" else attack, "factor": 10.0}}
                runs.append({"matrix": "attacks", "tag": f"{attack}_{defence}", "attack": attack,
                             "defence": defence, "overrides": over})
    if matrix in ("privacy", "all"):
        for eps in epsilons:
            dp = ({"enabled": False} if eps == "off" else
                  {"enabled": True, "target_epsilon": float(eps), "max_grad_norm": 1.0, "accountant": "rdp"})
            runs.append({"matrix": "privacy", "tag": f"epsilon-{eps}", "epsilon": eps,
                         "overrides": {"train": {"privacy": dp}, "federated": {"strategy": "fedavg"},
                                       "attack": {"site": None}}})
    return runs


def run_config(work: Path, overrides: dict[str, Any], rounds: int | None, epochs: int | None) -> Path:
    """The per-run overrides (baselines off, the schedule, the setting) as ``work/config/run.yaml``."""
    import yaml

    cfg: dict[str, Any] = {"baselines": {"centralized": False, "local_only": False}}
    for k, v in overrides.items():
        cfg[k] = dict(v)
    if rounds is not None:
        cfg["federated"]["rounds"] = rounds
    if epochs is not None:
        cfg.setdefault("train", {})["epochs_per_round"] = epochs
    p = work / "config" / "run.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


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


def clipped_or_left_out(curves: Path) -> str:
    """Per site, how often its update was clipped or left out (from the training table's ``status``)."""
    with open(curves, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.get("status") and r["status"] != "aggregated":
            counts.setdefault(r["site"], {}).setdefault(r["status"], 0)
            counts[r["site"]][r["status"]] += 1
    return "; ".join(f"{s}: " + ", ".join(f"{k} {n}" for k, n in sorted(c.items())) for s, c in sorted(counts.items()))


def _f(v: Any, p: int = 3) -> str:
    return f"{v:.{p}f}" if isinstance(v, float) and math.isfinite(v) else "n/a"


def _delta(v: Any, ref: Any) -> str:
    if not (isinstance(v, float) and isinstance(ref, float) and math.isfinite(v) and math.isfinite(ref) and ref):
        return "n/a"
    return f"{100 * (v - ref) / ref:+.1f}%"


def attack_table(rows: list[dict[str, Any]]) -> str:
    """Attack x defence: median Dice and mean AUC, change against the same defence's clean run and clean FedAvg."""
    clean = {r["defence"]: r for r in rows if r["attack"] == "none"}
    ref = clean.get("fedavg", {})
    lines = ["| attack | defence | median Dice | vs clean (same defence) | vs clean FedAvg | mean AUC | "
             "clipped / left out |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        c = clean.get(r["defence"], {})
        lines.append(f"| {r['attack']} | {r['defence']} | {_f(r.get('dice_median'))} | "
                     f"{_delta(r.get('dice_median'), c.get('dice_median'))} | "
                     f"{_delta(r.get('dice_median'), ref.get('dice_median'))} | {_f(r.get('mean_auc'))} | "
                     f"{r.get('participation') or ''} |")
    return "\n".join(lines) + "\n"


def privacy_table(rows: list[dict[str, Any]]) -> str:
    """Target epsilon: spent epsilon (max over sites), delta, median Dice, the AUCs and their mean."""
    lines = ["| target epsilon | spent epsilon (max over sites) | delta | median Dice | AUC IDH | AUC 1p/19q | "
             "AUC MGMT | AUC grade | mean AUC |", "|---|" + "---:|" * 8]
    for r in rows:
        lines.append(f"| {r['epsilon']} | {_f(r.get('epsilon_spent_max'), 2)} | {_f(r.get('delta'), 4)} | "
                     f"{_f(r.get('dice_median'))} | " + " | ".join(_f(r.get(f'auc_{m}')) for m in MARKERS)
                     + f" | {_f(r.get('mean_auc'))} |")
    return "\n".join(lines) + "\n"


def collect(keep: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows of every setting whose results are in ``keep`` (this and earlier invocations with the same
    ``--out``), in the matrix's order."""
    rows = []
    for run in runs:
        metrics, curves = keep / f"{run['tag']}_metrics.json", keep / f"{run['tag']}_training_curves.tsv"
        if not (metrics.is_file() and curves.is_file()):
            continue
        row = {k: v for k, v in run.items() if k != "overrides"}
        row.update(utility(json.loads(metrics.read_text())))
        row.update(spent(curves))
        row["participation"] = clipped_or_left_out(curves)
        rows.append(row)
    return rows


def link_results(src: Path, work: Path) -> None:
    """Hard-link a finished demo's ``results/`` into ``work`` (outputs are replaced by rename, never written in
    place, so the source stays untouched)."""
    dst = work / "results"
    if dst.exists():
        return
    shutil.copytree(src, dst, copy_function=os.link)


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--matrix", choices=("attacks", "privacy", "all"), default="all")
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml")
    ap.add_argument("--epsilons", nargs="+", default=["1", "3", "8", "off"])
    ap.add_argument("--rounds", type=int, default=None, help="federated.rounds (default: the config's)")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs_per_round (default: the config's)")
    ap.add_argument("--from-results", type=Path, default=None, help="a finished demo's results/ to reuse")
    ap.add_argument("--only", nargs="*", default=None, help="run only these tags (e.g. none_fedavg sign_flip_median)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default OUT/robustness_work)")
    ap.add_argument("--dry-run", action="store_true", help="only plan every run (snakemake -n)")
    ap.add_argument("--table-only", action="store_true", help="run nothing: write the tables from the results "
                    "already in OUT (e.g. of an interrupted run)")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per run")
    a = ap.parse_args(argv)
    for e in a.epsilons:
        if e != "off" and not (re.fullmatch(r"[0-9.]+", e) and float(e) > 0):
            ap.error(f"--epsilons: {e!r} is neither a positive number nor 'off'")
    import yaml

    load0 = common.load_avg()
    work = (a.work or (a.out / "robustness_work")).resolve()
    (work / "config").mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(a.config.read_text()) or {}
    sites = Path(cfg.get("sites", "config/sites.tsv"))
    (work / sites).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sites if sites.is_absolute() else common.REPO / sites, work / sites)
    with open(work / sites, newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    external = next(r["site"] for r in table if r["role"] == "external")
    attacker = next(r["site"] for r in table if r["role"] == "train")
    if a.from_results is not None:
        link_results(a.from_results.resolve(), work)
    keep = a.out / NAME
    keep.mkdir(parents=True, exist_ok=True)
    target = f"results/sites/{external}/evaluation/federated/metrics.json"
    rows: list[dict[str, Any]] = []
    runs = settings(a.matrix, a.epsilons, attacker)
    if a.only:  # in the order given
        runs = sorted((r for r in runs if r["tag"] in a.only), key=lambda r: a.only.index(r["tag"]))
    if a.table_only:
        runs = []
    for run in runs:
        tag = run["tag"]
        conf = run_config(work, run["overrides"], a.rounds, a.epochs)
        cmd = [str(common.BIN / "snakemake"), "--snakefile", str(common.REPO / "Snakefile"), "--directory",
               str(work), "--profile", str(common.REPO / "profiles" / "local"), "--cores", str(a.cores),
               "--configfile", str(a.config), str(conf), "--rerun-triggers", "mtime", "--forcerun", "init_model",
               *(["-n", "--quiet", "rules"] if a.dry_run else []),
               "--", target, "results/federated/training_curves.tsv"]
        load = common.load_avg()[0]
        r = common.run_child(cmd, cwd=work, timeout=a.timeout, log=keep / f"{tag}.log", tree=not a.dry_run)
        row: dict[str, Any] = {k: v for k, v in run.items() if k != "overrides"}
        row.update({"rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "load1": load,
                    "rounds": a.rounds, "epochs": a.epochs, "dry_run": a.dry_run})
        if r["rc"] == 0 and not a.dry_run:
            metrics = work / target
            curves = work / "results" / "federated" / "training_curves.tsv"
            shutil.copyfile(metrics, keep / f"{tag}_metrics.json")
            shutil.copyfile(curves, keep / f"{tag}_training_curves.tsv")
            row.update({k: common.rnd(v, 4) for k, v in utility(json.loads(metrics.read_text())).items()})
            row.update({k: common.rnd(v, 6) for k, v in spent(curves).items()})
            row["participation"] = clipped_or_left_out(curves)
        rows.append(row)
        print(f"[{NAME}] {tag}: rc {r['rc']} in {r['wall_s']:.0f} s"
              + ("" if a.dry_run else f", median Dice {row.get('dice_median')}, mean AUC {row.get('mean_auc')}"),
              flush=True)
        if r["rc"] != 0:
            raise SystemExit(f"run {tag} failed (rc {r['rc']}), see {keep / (tag + '.log')}")
    if not a.table_only:
        common.save(a.out, NAME, rows, [], {"matrix": a.matrix, "epsilons": a.epsilons, "rounds": a.rounds,
                                            "epochs": a.epochs, "cores": a.cores, "work": str(work),
                                            "dry_run": a.dry_run, "config": str(a.config),
                                            "from_results": str(a.from_results)}, load0, {})
    if not a.dry_run:
        done = collect(keep, settings(a.matrix, a.epsilons, attacker))
        attacks = [r for r in done if r["matrix"] == "attacks"]
        privacy = [r for r in done if r["matrix"] == "privacy"]
        if attacks:
            (keep / "attacks_table.md").write_text(attack_table(attacks))
            print(attack_table(attacks), end="")
        if privacy:
            (keep / "privacy_table.md").write_text(privacy_table(privacy))
            print(privacy_table(privacy), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
