"""The paper recipe's cost: seconds per training step and per inference at ``config/paper.yaml``, hours per round.

The recipe (grid shape, width, depth, batch size, augmentation) is read from ``config/config.yaml`` overlaid with
``config/paper.yaml`` (nested keys merged as Snakemake merges ``--configfile A B``). Each measurement runs in its
own child process with ``--threads`` torch threads (default 2) and reports its own peak RSS (``VmHWM``):

- ``train``: one training step as ``fedglioma.train.local.local_train`` takes it: ``augment_batch`` (the recipe's
  augmentation, seeded), forward, ``MultiTaskLoss`` (all labels present), backward, gradient clipping
  (``train.grad_clip``), AdamW; random data on the recipe's grid, batch ``train.batch_size``. ``--warmup`` steps
  (default 1) are not timed, then ``--steps`` (default 2) are; the augmentation is timed on its own too.
  ``train.amp`` (bf16 autocast) is used on CUDA only, as in ``local_train``.
- ``infer``: one subject (batch 1) in eval mode under ``torch.no_grad``: forward and the sigmoid/softmax of
  ``fedglioma.train.local.predict``; 1 warm-up, then ``--infer-reps`` (default 3) timed.
- ``flops``: GFLOP of one training step and one inference (``torch.utils.flop_counter`` on the ``meta``
  device: nothing is computed), so each timing also gives the achieved GFLOP/s.
- ``load``: ``np.load`` of one ``sub-*_train.npz`` on the recipe's grid (``np.savez_compressed``, a brain-shaped
  non-zero region as after skull stripping), as ``SiteDataset`` reads it per sample.

Wall and CPU seconds (``time.process_time`` of the child, all its threads) are both reported: on a machine
shared with other jobs the wall time grows with the load, the CPU seconds much less (their ratio is how many cores
the child actually had).

Hours per round: a round lasts as long as its slowest site (sites train in parallel, the server's aggregation is
seconds). Per site with ``n`` subjects, ``n_val = round(val_fraction * n)``, ``n_train = n - n_val``:
``local_train`` = ``epochs_per_round * ceil(n_train / batch)`` steps (+ loading) + ``n_val`` inferences (the
update's own validation), then ``validate`` = ``n_val`` inferences (+ loading). The per-site split of the paper's
1,552 training subjects is an assumption (``--split``), stated in the output.

With ``--grid`` the step is measured on another grid as well (e.g. a smaller one when a full-size step takes
minutes) and the recipe's time is extrapolated by voxel count (``extrapolated: true`` in the output).

Usage::

    python benchmarks/paper_recipe.py                      # the recipe on this machine, results/benchmarks/
    python benchmarks/paper_recipe.py --quick --out /tmp/b # one timed step, one timed inference
    python benchmarks/paper_recipe.py --grid 56 64 56      # also a smaller grid (extrapolation check)
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "paper_recipe"
CONFIGS = (common.REPO / "config" / "config.yaml", common.REPO / "config" / "paper.yaml")
#: Assumed split of the paper's 1,552 training subjects over five sites (largest: UCSF-PDGM's 495 subjects).
DEFAULT_SPLIT = (495, 360, 300, 230, 167)


# ----------------------------------------------------------------------------------------------- recipe


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested merge of ``over`` into a copy of ``base`` (mappings key by key, anything else replaced), as
    Snakemake's ``update_config`` does for ``--configfile A B``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(paths: tuple[Path, ...] = CONFIGS) -> dict[str, Any]:
    """The merged config of ``paths`` (later files win)."""
    import yaml

    cfg: dict[str, Any] = {}
    for p in paths:
        cfg = merge(cfg, yaml.safe_load(Path(p).read_text()) or {})
    return cfg


def settings_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the measurement needs from the merged config."""
    grid = cfg["preprocess"]["grid"]
    shape = grid["grid_shape"]
    shape = list(shape) * 3 if isinstance(shape, int) else list(shape)
    return {"grid": shape, "grid_spacing": grid["grid_spacing"], "model": cfg.get("model", {}),
            "train": cfg.get("train", {}), "rounds": cfg.get("federated", {}).get("rounds")}


# ----------------------------------------------------------------------------------------------- children


def _setup(spec: dict[str, Any]):  # torch is imported lazily
    import torch

    from fedglioma.model import ModelConfig, build_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(ModelConfig.model_validate(spec["model"])).to(device)
    return torch, model, device


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(torch: Any, device: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"peak_rss_mb": common.vm_hwm_mb()}
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 1024**2, 1)
        out["device_name"] = torch.cuda.get_device_name()
    return out


def train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time training steps of the recipe in this (fresh) process."""
    torch, model, device = _setup(spec)
    from fedglioma.model import MultiTaskLoss
    from fedglioma.train.augment import augment_batch
    from fedglioma.train.config import TrainConfig

    tcfg = TrainConfig.model_validate(spec["train"])
    amp = bool(tcfg.amp and device.type == "cuda")
    b, grid = tcfg.batch_size, spec["grid"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 4, *grid, generator=g)
    batch = {"image": x.to(device), "tumour": (torch.rand(b, 1, *grid, generator=g) > 0.95).float().to(device),
             "has_seg": torch.ones(b, dtype=torch.bool, device=device),
             "labels": torch.tensor([[1.0, 1.0, 0.0, 2.0]] * b, device=device)}
    loss_fn = MultiTaskLoss(tcfg.task_weights)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    model.train()
    aug_s, step_s, cpu_s = [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        _sync(torch, device)
        t0, c0 = time.perf_counter(), time.process_time()
        bt = augment_batch(batch, tcfg.augment, g)
        _sync(torch, device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(bt["image"])
        out = {k: v.float() for k, v in out.items()}
        loss, _ = loss_fn(out, bt["tumour"], bt["has_seg"], bt["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        _sync(torch, device)
        t2 = time.perf_counter()
        if i >= spec["warmup"]:
            aug_s.append(t1 - t0)
            step_s.append(t2 - t0)
            cpu_s.append(time.process_time() - c0)
        print(f"step {i}: {t2 - t0:.2f} s (augmentation {t1 - t0:.2f} s)", file=sys.stderr, flush=True)
    return {"kind": "train", "grid": grid, "batch": b, "amp": amp, "device": device.type,
            "params": sum(p.numel() for p in model.parameters()), "loss": float(loss),
            "step_s": [round(v, 3) for v in step_s], "step_cpu_s": [round(v, 3) for v in cpu_s],
            "augment_s": [round(v, 3) for v in aug_s],
            **_peak(torch, device)}


def infer_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time inference of one subject (what ``predict`` does) in this (fresh) process."""
    torch, model, device = _setup(spec)
    from fedglioma.train.config import TrainConfig

    amp = bool(TrainConfig.model_validate(spec["train"]).amp and device.type == "cuda")
    x = torch.randn(1, 4, *spec["grid"], generator=torch.Generator().manual_seed(1)).to(device)
    model.eval()
    times, cpu = [], []
    with torch.no_grad():
        for i in range(1 + spec["reps"]):
            _sync(torch, device)
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            torch.sigmoid(out["seg"].float()).cpu()
            torch.softmax(out["grade"].float(), dim=1).cpu()
            _sync(torch, device)
            if i >= 1:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {"kind": "infer", "grid": spec["grid"], "amp": amp, "device": device.type,
            "infer_s": [round(v, 3) for v in times], "infer_cpu_s": [round(v, 3) for v in cpu],
            **_peak(torch, device)}


def load_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``np.load`` of one training file on the grid (written compressed, brain-shaped non-zero region)."""
    import numpy as np

    grid = spec["grid"]
    rng = np.random.default_rng(0)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in grid], indexing="ij")
    brain = (sum(a**2 / 0.8**2 for a in axes) <= 1).astype(np.uint8)
    image = (rng.standard_normal((4, *grid)).astype(np.float32) * brain).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="fgbench-npz-") as tmp:
        f = Path(tmp) / "sub-001_train.npz"
        np.savez_compressed(f, image=image, brain=brain, tumour=np.zeros_like(brain))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            with np.load(f, allow_pickle=False) as z:
                _ = z["image"], z["tumour"]
            times.append(time.perf_counter() - t0)
        size = f.stat().st_size
    return {"kind": "load", "grid": grid, "load_s": [round(v, 3) for v in times], "npz_mb": round(size / 1e6, 1),
            "brain_fraction": round(float(brain.mean()), 3)}


def flops_child(spec: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of one training step (forward + backward) and one inference on the grid, counted by
    ``torch.utils.flop_counter`` on the ``meta`` device (no arithmetic runs; convolutions and matmuls only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedglioma.model import ModelConfig, build_model

    b = int(spec["train"].get("batch_size", 2))
    with torch.device("meta"):
        model = build_model(ModelConfig.model_validate(spec["model"]))
    fc = FlopCounterMode(display=False)
    with fc:
        out = model(torch.zeros(b, 4, *spec["grid"], device="meta"))
        sum(v.sum() for v in out.values()).backward()  # the loss itself has no convolutions or matmuls
    train = fc.get_total_flops()
    model.eval()
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        model(torch.zeros(1, 4, *spec["grid"], device="meta"))
    return {"kind": "flops", "grid": spec["grid"], "train_gflop": round(train / 1e9, 1),
            "infer_gflop": round(fc.get_total_flops() / 1e9, 1)}


CHILDREN = {"train": train_child, "infer": infer_child, "load": load_child, "flops": flops_child}


# ----------------------------------------------------------------------------------------------- parent


def hours_per_round(split: list[int], train_cfg: dict[str, Any], step_s: float, infer_s: float,
                    load_s: float) -> dict[str, Any]:
    """Seconds per site (``local_train`` + ``validate``) and the round (the slowest site), in hours."""
    from fedglioma.train.config import TrainConfig

    t = TrainConfig.model_validate(train_cfg)
    sites = []
    for n in split:
        n_val = round(t.val_fraction * n)
        n_train = n - n_val
        steps = t.epochs_per_round * math.ceil(n_train / t.batch_size)
        train = steps * (step_s + t.batch_size * load_s) + n_val * (infer_s + load_s)
        validate = n_val * (infer_s + load_s)
        sites.append({"n": n, "n_train": n_train, "n_val": n_val, "steps": steps, "local_train_h": train / 3600,
                      "validate_h": validate / 3600, "round_h": (train + validate) / 3600})
    worst = max(sites, key=lambda s: s["round_h"])
    return {"sites": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()} for s in sites],
            "round_h": round(worst["round_h"], 3), "largest_site": worst["n"]}


def run(kind: str, spec: dict[str, Any], threads: int, timeout: float) -> dict[str, Any]:
    me = Path(__file__).resolve()
    load = common.load_avg()[0]
    res = common.run_child([common.PYTHON, me, "--_child", json.dumps({**spec, "kind": kind, "threads": threads})],
                           env=common.thread_env(threads), timeout=timeout)
    if res["rc"] != 0:
        raise SystemExit(f"[{NAME}] {kind} child failed (rc {res['rc']}):\n{res['stdout'][-3000:]}")
    out = common.last_json_line(res["stdout"])
    out.update(load1_before=load, child_wall_s=res["wall_s"], child_cpu_s=res["cpu_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--config", type=Path, nargs="+", default=list(CONFIGS),
                    help="config files merged in order (default config.yaml, paper.yaml)")
    ap.add_argument("--grid", type=int, nargs=3, default=None, help="also measure the step on this grid")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default 2, quick 1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--infer-reps", type=int, default=None, help="timed inferences (default 3, quick 1)")
    ap.add_argument("--split", type=int, nargs="+", default=list(DEFAULT_SPLIT),
                    help="training subjects per site for hours per round (default: assumed paper split)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    ap.add_argument("--_child", help="internal: one measurement (JSON)")
    a = ap.parse_args(argv)
    if a._child:
        spec = json.loads(a._child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)), flush=True)
        return 0

    load0 = common.load_avg()
    s = settings_of(recipe(tuple(a.config)))
    steps = a.steps or (1 if a.quick else 2)
    infer_reps = a.infer_reps or (1 if a.quick else 3)
    base = {"model": s["model"], "train": s["train"], "warmup": a.warmup, "steps": steps, "reps": infer_reps}
    grids = [s["grid"]] + ([a.grid] if a.grid and list(a.grid) != s["grid"] else [])
    rows: list[dict[str, Any]] = []
    runs = []
    for grid in grids:
        spec = {**base, "grid": grid}
        gflop = run("flops", spec, a.threads, a.timeout)
        runs.append(gflop)
        for kind in ("load", "infer", "train"):
            r = run(kind, spec, a.threads, a.timeout)
            runs.append(r)
            gf = gflop.get(f"{kind}_gflop")
            vals = r.get("step_s") or r.get("infer_s") or r.get("load_s")
            med = common.median(vals)
            print(f"[{NAME}] {kind} {'x'.join(map(str, grid))}: {med:.3f} s ({vals}), "
                  f"{r.get('peak_rss_mb')} MB (load {r['load1_before']})", flush=True)
            rows.append({"kind": kind, "grid": "x".join(map(str, grid)), "voxels": math.prod(grid),
                         "s": common.rnd(med), "s_all": vals,
                         "cpu_s": common.rnd(common.median(r.get("step_cpu_s") or r.get("infer_cpu_s") or [])),
                         "augment_s": common.median(r.get("augment_s", [])), "gflop": gf,
                         "gflops": common.rnd(gf / med, 1) if gf and med else None,
                         "peak_rss_mb": r.get("peak_rss_mb"), "cuda_peak_mb": r.get("cuda_peak_mb"),
                         "device": r.get("device", "cpu"), "params": r.get("params"), "threads": a.threads,
                         "load1_before": r["load1_before"]})
    by = {(r["kind"], r["grid"]): r["s"] for r in rows}
    g0 = "x".join(map(str, s["grid"]))
    step_s, infer_s, load_s = by[("train", g0)], by[("infer", g0)], by[("load", g0)]
    extra: dict[str, Any] = {"runs": runs, "split": a.split, "split_note": (
        "assumed per-site split of the 1,552 training subjects (the largest site is UCSF-PDGM's 495); "
        "sites train in parallel, a round lasts as long as the slowest site")}
    extra["hours_per_round"] = hours_per_round(a.split, s["train"], step_s, infer_s, load_s)
    extra["hours_per_round_even_split"] = hours_per_round([311, 311, 310, 310, 310], s["train"], step_s, infer_s,
                                                          load_s)
    if len(grids) > 1:  # extrapolation check: the other grid scaled by voxels
        g1 = "x".join(map(str, grids[1]))
        ratio = math.prod(s["grid"]) / math.prod(grids[1])
        extra["extrapolation"] = {"from_grid": g1, "voxel_ratio": round(ratio, 3),
                                  "train_s_extrapolated": common.rnd(by[("train", g1)] * ratio),
                                  "train_s_measured": step_s,
                                  "infer_s_extrapolated": common.rnd(by[("infer", g1)] * ratio),
                                  "infer_s_measured": infer_s}
    rounds = s["rounds"] or 1
    h = extra["hours_per_round"]["round_h"]
    print(f"[{NAME}] recipe {g0} @ {s['grid_spacing']} mm, width {s['model'].get('width')}, depth "
          f"{s['model'].get('depth')}, batch {s['train'].get('batch_size')}, {a.threads} threads: "
          f"{step_s} s/step, {infer_s} s/inference, {load_s} s/load; slowest site "
          f"{extra['hours_per_round']['largest_site']}: {h:.2f} h/round, {h * rounds:.0f} h for {rounds} rounds",
          flush=True)
    common.save(a.out, NAME, rows, [], {"configs": [str(p) for p in a.config], **s, "threads": a.threads,
                                        "steps": steps, "warmup": a.warmup, "infer_reps": infer_reps,
                                        "quick": a.quick}, load0, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
