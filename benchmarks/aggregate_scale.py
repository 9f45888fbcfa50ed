"""Aggregation scale: wall time and peak memory of ``fedglioma federated aggregate`` for 2, 8, 32 and 128 sites.

Model sizes: ``demo`` (the ``model:`` section of ``config/config.yaml``) and ``full`` (width 16, depth 4, the
documented full size). Update files are written with ``fedglioma.federated.exchange.save_params``: random float32
tensors with exactly the names and shapes of ``build_model(...).state_dict()``, sidecars with ``kind: update``,
round 1, a distinct site and a random ``n_train``; the previous global model is a real round-0 model
(``fedglioma.train.local.init_global``). Each aggregation is the real CLI in a child process (all checks: sidecar,
sha256 of every file, header, finiteness), its peak RSS its own ``VmHWM``. ``fedglioma --version`` (interpreter,
torch and CLI imports, no work) is measured alongside as the start-up floor. Runs are interleaved (every
repetition runs every size and site count, rotated) and medians reported.

Target: memory flat in the number of sites (``fedavg`` keeps one update in memory at a time): peak RSS at 128
sites / peak RSS at 2 sites <= 1.10 for each size. ``--strategies median`` shows the O(sites x largest tensor)
robust strategy for contrast (no target).

Usage::

    python benchmarks/aggregate_scale.py --quick --out /tmp/bench
    python benchmarks/aggregate_scale.py --sites 2 8 32 128 --strategies fedavg median
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "aggregate_scale"


def model_sizes(config: Path) -> dict[str, dict[str, int]]:
    import yaml

    m = (yaml.safe_load(config.read_text()) or {}).get("model", {}) or {}
    return {"demo": {"width": int(m.get("width", 8)), "depth": int(m.get("depth", 3))},
            "full": {"width": 16, "depth": 4}}


def make_updates(work: Path, width: int, depth: int, n_sites: int, seed: int = 0) -> dict[str, Any]:
    """Round-0 global model and ``n_sites`` update files under ``work``; returns model size facts."""
    import torch

    from fedglioma.federated.exchange import load_params, save_params
    from fedglioma.model import ModelConfig
    from fedglioma.train.local import init_global

    cfg = ModelConfig(width=width, depth=depth)
    side = init_global(work / "round-0" / "global.safetensors", cfg, seed)
    state, _ = load_params(work / "round-0" / "global.safetensors")
    g = torch.Generator().manual_seed(seed)
    for i in range(n_sites):
        site = f"S{i:03d}"
        tensors = {k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}
        n_train = int(torch.randint(10, 400, (1,), generator=g))
        save_params(work / "round-1" / f"site-{site}" / "update.safetensors", tensors,
                    {"kind": "update", "round": 1, "site": site, "n_train": n_train, "strategy": "fedavg"})
    return {"numel": side["numel"], "n_tensors": side["n_tensors"],
            "file_mb": round((work / "round-0" / "global.safetensors").stat().st_size / 1024**2, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml",
                    help="config whose model: section is the demo size")
    ap.add_argument("--sites", type=int, nargs="+", default=[2, 8, 32, 128])
    ap.add_argument("--sizes", nargs="+", default=["demo", "full"], choices=("demo", "full"))
    ap.add_argument("--strategies", nargs="+", default=None, help="default fedavg (quick), fedavg median (full)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/aggregate_work)")
    ap.add_argument("--_make", help="internal: JSON {work, width, depth, n}")
    a = ap.parse_args(argv)
    if a._make:
        s = json.loads(a._make)
        print(json.dumps(make_updates(Path(s["work"]), s["width"], s["depth"], s["n"])), flush=True)
        return 0

    load0 = common.load_avg()
    reps = a.reps or (3 if a.quick else 5)
    strategies = a.strategies or (["fedavg"] if a.quick else ["fedavg", "median"])
    sizes = {k: v for k, v in model_sizes(a.config).items() if k in a.sizes}
    work = a.work or (a.out / "aggregate_work")
    shutil.rmtree(work, ignore_errors=True)
    me = Path(__file__).resolve()
    env = common.thread_env(1)
    facts = {}
    for size, m in sizes.items():
        r = common.run_child([common.PYTHON, me, "--_make", json.dumps({"work": str(work / size), **m,
                                                                         "n": max(a.sites)})], env=env)
        if r["rc"] != 0:
            raise SystemExit(f"writing the updates failed:\n{r['stdout'][-3000:]}")
        facts[size] = {**m, **common.last_json_line(r["stdout"]), "setup_s": r["wall_s"]}
        print(f"[{NAME}] {size}: {facts[size]}", flush=True)
    cfg_file = work / "config.yaml"
    cfg_file.write_text(f"sites: {work / 'sites.tsv'}\nfederated:\n  strategy: fedavg\n")
    fg = common.BIN / "fedglioma"

    jobs = [("startup", "-", 0)] + [(size, st, n) for size in sizes for st in strategies for n in a.sites]
    rows: list[dict[str, Any]] = []
    for rep in range(reps):
        k = rep % len(jobs)
        for size, st, n in jobs[k:] + jobs[:k]:
            load = common.load_avg()[0]
            if size == "startup":
                r = common.run_script_measured(fg, ["--version"], env=env, timeout=600)
            else:
                d = work / size
                out = work / "out" / f"{size}-{st}-{n}"
                ups = [d / "round-1" / f"site-S{i:03d}" / "update.safetensors" for i in range(n)]
                r = common.run_script_measured(
                    fg, ["federated", "aggregate", "--config", str(cfg_file), "--set", f"federated.strategy={st}",
                         "--round", "1", "--previous", str(d / "round-0" / "global.safetensors"),
                         "--model", str(out / "global.safetensors"), "--meta", str(out / "global.json"),
                         "--server-state", str(out / "server_state.safetensors"),
                         "--server-state-meta", str(out / "server_state.json"),
                         "--updates", *map(str, ups), "--update-metas", *(str(u.with_suffix(".json")) for u in ups)],
                    env=env, timeout=1800)
            if r["rc"] != 0:
                raise SystemExit(f"aggregate {size} {st} {n} failed:\n{r.get('stdout', '')[-3000:]}")
            rows.append({"size": size, "strategy": st, "sites": n, "rep": rep, "wall_s": r["wall_s"],
                         "inner_s": r.get("inner_s"), "cpu_s": r["cpu_s"], "peak_rss_mb": r.get("peak_rss_mb"),
                         "load1": load})
            print(f"[{NAME}] rep {rep} {size:7s} {st:7s} {n:4d} sites: {r['wall_s']:6.2f} s  "
                  f"{r.get('peak_rss_mb')} MB  (load {load})", flush=True)

    summary = []
    for size, st, n in jobs:
        rs = [r for r in rows if r["size"] == size and r["strategy"] == st and r["sites"] == n]
        f = facts.get(size, {})
        summary.append({"size": size, "width": f.get("width"), "depth": f.get("depth"), "numel": f.get("numel"),
                        "file_mb": f.get("file_mb"), "strategy": st, "sites": n, "n_reps": len(rs),
                        "wall_s": common.rnd(common.median(r["wall_s"] for r in rs), 2),
                        "inner_s": common.rnd(common.median(r["inner_s"] for r in rs), 2),
                        "cpu_s": common.rnd(common.median(r["cpu_s"] for r in rs), 2),
                        "peak_rss_mb": common.rnd(common.median(r["peak_rss_mb"] for r in rs), 1),
                        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs)})
    targets = []
    lo, hi = min(a.sites), max(a.sites)
    for size in sizes:
        for st in strategies:
            pk = {s["sites"]: s["peak_rss_mb"] for s in summary if s["size"] == size and s["strategy"] == st}
            ratio = pk[hi] / pk[lo] if pk.get(lo) else None
            if st == "fedavg":
                targets.append(common.target(NAME, f"fedavg peak RSS {hi} sites / {lo} sites, {size} model "
                                             f"(w{sizes[size]['width']} d{sizes[size]['depth']})", ratio, "<=", 1.10,
                                             "x"))
    common.save(a.out, NAME, summary, targets, {"reps": reps, "sites": a.sites, "strategies": strategies,
                                                "sizes": facts, "threads": 1, "quick": a.quick},
                load0, {"runs": rows})
    for s in summary:
        print(f"[{NAME}] {s['size']:7s} {s['strategy']:7s} {s['sites']:4d} sites: {s['wall_s']} s, "
              f"{s['peak_rss_mb']} MB", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
