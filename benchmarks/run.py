"""Run the benchmark suite: one child process per benchmark script, then one table of targets.

    python benchmarks/run.py --quick            # train_throughput, preprocess_speed, aggregate_scale,
                                                # workflow_scale, predict_patient (`make bench-quick`)
    python benchmarks/run.py                    # + quality (hours: the real workflow, 3 seeds x 2 strategies)
                                                #   and end_to_end (the demo workflow); `make bench`
    python benchmarks/run.py --only aggregate_scale --out /tmp/bench

Outputs in ``--out`` (default ``results/benchmarks/``): each script's ``<name>.tsv``/``.json``/``_targets.json``
and ``<name>.log``, plus ``targets.tsv`` (every target: measured, threshold, met) and ``suite.json`` (machine,
load before and after, wall seconds and exit code per script). Exit code 1 when a script failed; a missed
target is reported, not an error. Not part of ``make test``.
"""

from __future__ import annotations

import json
import sys
import time

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

QUICK = ("train_throughput", "preprocess_speed", "aggregate_scale", "workflow_scale", "predict_patient")
FULL = ("train_throughput", "preprocess_speed", "aggregate_scale", "workflow_scale", "predict_patient", "end_to_end",
        "quality")


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--only", nargs="+", choices=FULL, help="run only these scripts")
    ap.add_argument("--skip", nargs="+", choices=FULL, default=[], help="leave these out")
    ap.add_argument("--update-docs", action="store_true", help="end_to_end writes its figure into docs/benchmarks.md")
    a = ap.parse_args(argv)
    names = [n for n in (a.only or (QUICK if a.quick else FULL)) if n not in a.skip]
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    suite = {"quick": a.quick, "machine": common.machine(), "load_before": common.load_avg(), "scripts": []}
    t_all = time.perf_counter()
    failed = []
    for name in names:
        cmd = [common.PYTHON, common.BENCH_DIR / f"{name}.py", "--out", out]
        if a.quick:
            cmd.append("--quick")
        if a.reps:
            cmd += ["--reps", str(a.reps)]
        if name == "end_to_end" and a.update_docs:
            cmd.append("--update-docs")
        print(f"== {name}: {' '.join(map(str, cmd))} (load {common.load_avg()})", flush=True)
        r = common.run_child(cmd, env=common.thread_env(2), log=out / f"{name}.log")
        tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
        suite["scripts"].append({"name": name, "rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                 "load_after": common.load_avg()})
        print(f"== {name}: rc {r['rc']} in {r['wall_s']:.0f} s", flush=True)
        if r["rc"] != 0:
            failed.append(name)
    suite["wall_s"] = round(time.perf_counter() - t_all, 1)
    suite["load_after"] = common.load_avg()
    targets = []
    for name in names:
        f = out / f"{name}_targets.json"
        if f.is_file() and name not in failed:
            targets += json.loads(f.read_text())
    common.write_tsv(out / "targets.tsv", targets)
    suite["targets"] = targets
    suite["failed"] = failed
    common.write_json(out / "suite.json", suite)
    print(f"\n== suite: {suite['wall_s']:.0f} s, load {suite['load_before']} -> {suite['load_after']}")
    for t in targets:
        flag = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  {flag:6s} {t['benchmark']}: {t['target']}: {t['measured']} {t['unit']} ({t['op']} {t['threshold']})")
    if failed:
        print(f"FAILED: {', '.join(failed)} (see the logs in {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
