"""Training throughput: samples/s of the fedglioma network vs MONAI references, achieved GFLOP/s, peak memory.

One training step = forward + masked multi-task loss (``fedglioma.model.MultiTaskLoss``) + backward + AdamW, on
random data with all labels present, batch ``--batch`` on the network grid ``--grid``. Every configuration runs in
its own child process (its peak RSS is its own ``VmHWM``); configurations are interleaved (each repetition runs
all of them, in a rotated order) and the figures are medians over repetitions, so a change of the machine's load
hits every configuration alike. Ratios are taken per repetition (neighbouring runs) and their median reported.

References (``monai``, installed with ``--no-deps``), both with fedglioma's classification heads and loss:

- ``dynunet``: ``monai.networks.nets.DynUNet`` with kernels 3, strides ``1, 2, ..., 2`` (``depth`` times),
  filters ``w, 2w, ..., w 2**depth``, instance norm (affine), LeakyReLU(0.01), transposed-convolution
  upsampling: the same architecture as ``fedglioma.model.MultiTaskUNet`` (nnU-Net style), any depth.
- ``basicunet``: ``monai.networks.nets.BasicUNet`` with features ``w, 2w, 4w, 8w, 16w, w`` (depth 4 only;
  max-pool downsampling, biased convolutions), same norm, activation and deconvolution upsampling.

The heads see the bottleneck (captured with a forward hook) pooled globally and by the predicted tumour
probability, as in fedglioma. Variants of the fedglioma network: ``fp32`` (eager), ``channels_last``
(``torch.channels_last_3d`` model and input), ``bf16`` (``torch.autocast("cpu", torch.bfloat16)`` around
forward and loss), ``compile`` (``torch.compile``, default inductor; compile time reported separately), and
``threads`` 1 vs 2. Every child gets an empty ``TORCHINDUCTOR_CACHE_DIR``, so ``compile_s`` is a cold compile
(with inductor's on-disk cache warm it takes seconds). FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode``; the machine's
peak is the best of a large matmul (``n = 4096``) in fp32 and bf16 with the same threads. On a CPU without
native bf16 (no AVX512-BF16/AMX) the bf16 variants and the bf16 peak are skipped: torch would emulate them,
which takes about 10 minutes for the matmul alone and measures nothing about bf16 hardware.

Usage::

    python benchmarks/train_throughput.py --quick --out /tmp/bench
    python benchmarks/train_throughput.py --grid 64 64 64 --reps 5
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "train_throughput"
VARIANTS = ("fp32", "channels_last", "bf16", "compile")


def cfg(net: str, width: int, depth: int, variant: str = "fp32", threads: int = 2, once: bool = False) -> dict:
    """A configuration; ``once``: run in the first repetition only (torch.compile in quick mode)."""
    return {"net": net, "width": width, "depth": depth, "variant": variant, "threads": threads, "once": once}


def label(c: dict) -> str:
    return f"{c['net']}-w{c['width']}d{c['depth']}-{c['variant']}-t{c['threads']}"


def configs(quick: bool) -> list[dict]:
    """Quick: the demo model (width 8, depth 3) with every variant, 1 thread, and the references; depth 4 for
    BasicUNet; torch.compile in the first repetition only. Full: also width 16 depth 4 (the documented full size)
    and compile in every repetition."""
    rows = [
        cfg("fedglioma", 8, 3),
        cfg("dynunet", 8, 3),
        cfg("fedglioma", 8, 3, "channels_last"),
        cfg("fedglioma", 8, 3, "bf16"),
        cfg("fedglioma", 8, 4),
        cfg("basicunet", 8, 4),
        cfg("fedglioma", 8, 3, threads=1),
        cfg("fedglioma", 8, 3, "compile", once=quick),
    ]
    if not quick:
        rows += [
            cfg("dynunet", 8, 4),
            cfg("fedglioma", 16, 4),
            cfg("dynunet", 16, 4),
            cfg("basicunet", 16, 4),
            cfg("fedglioma", 16, 4, "channels_last"),
            cfg("fedglioma", 16, 4, "bf16"),
        ]
    return rows


# ----------------------------------------------------------------------------------------------- networks


def build(net: str, width: int, depth: int):  # torch is imported lazily
    """The network: fedglioma's ``build_model`` or a MONAI U-Net with fedglioma's heads."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from fedglioma.constants import TASKS
    from fedglioma.model import ModelConfig, build_model
    from fedglioma.model.net import HEAD_SIZES, ClassificationHead

    if net == "fedglioma":
        return build_model(ModelConfig(width=width, depth=depth, dropout=0.0))

    class MonaiMultiTask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if net == "dynunet":
                from monai.networks.nets import DynUNet

                self.unet = DynUNet(3, 4, 1, kernel_size=[3] * (depth + 1), strides=[1] + [2] * depth,
                                    upsample_kernel_size=[2] * depth, filters=[width * 2**i for i in range(depth + 1)],
                                    norm_name=("INSTANCE", {"affine": True}),
                                    act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}))
                hooked = self.unet.bottleneck
                cb = width * 2**depth
            elif net == "basicunet":
                from monai.networks.nets import BasicUNet

                if depth != 4:
                    raise ValueError("BasicUNet has 4 downsamplings")
                w = width
                self.unet = BasicUNet(spatial_dims=3, in_channels=4, out_channels=1,
                                      features=(w, 2 * w, 4 * w, 8 * w, 16 * w, w),
                                      act=("LeakyReLU", {"negative_slope": 0.01, "inplace": True}),
                                      norm=("instance", {"affine": True}), upsample="deconv")
                hooked = self.unet.down_4
                cb = 16 * w
            else:
                raise ValueError(f"unknown net {net!r}")
            self.stride = 2**depth
            self._bottleneck: list[torch.Tensor] = []
            hooked.register_forward_hook(lambda _m, _i, out: self._bottleneck.append(out))
            self.heads = nn.ModuleDict({t: ClassificationHead(2 * cb, cb, HEAD_SIZES[t], 0.0) for t in TASKS})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            self._bottleneck.clear()
            seg = self.unet(x)
            b = self._bottleneck[-1]
            weight = F.avg_pool3d(torch.sigmoid(seg.detach()), kernel_size=self.stride, stride=self.stride)
            gap = b.mean(dim=(2, 3, 4))
            tumour = (b * weight).sum(dim=(2, 3, 4)) / (weight.sum(dim=(2, 3, 4)) + 1e-6)
            feats = torch.cat([gap, tumour], dim=1)
            out = {"seg": seg}
            for t in TASKS:
                logits = self.heads[t](feats)
                out[t] = logits[:, 0] if HEAD_SIZES[t] == 1 else logits
            return out

    return MonaiMultiTask()


# ----------------------------------------------------------------------------------------------- children


def child(c: dict, grid: list[int], batch: int, warmup: int, steps: int, count_flops: bool) -> dict[str, Any]:
    """Time ``steps`` training steps of one configuration in this (fresh) process."""
    import contextlib

    import torch

    from fedglioma.model import MultiTaskLoss

    torch.set_num_threads(c["threads"])
    torch.manual_seed(0)
    model = build(c["net"], c["width"], c["depth"])
    n_params = sum(p.numel() for p in model.parameters())
    loss_fn = MultiTaskLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, *grid, generator=g)
    tumour = (torch.rand(batch, 1, *grid, generator=g) > 0.9).float()
    has_seg = torch.ones(batch, dtype=torch.bool)
    labels = torch.tensor([[1.0, 1.0, 0.0, 2.0]] * batch)
    model.train()
    res: dict[str, Any] = {"label": label(c), **c, "params": n_params, "grid": grid, "batch": batch}

    flops = None
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        with fc:
            loss, _ = loss_fn(model(x), tumour, has_seg, labels)
            loss.backward()
        flops = fc.get_total_flops()
        opt.zero_grad(set_to_none=True)
    res["gflop_per_step"] = None if flops is None else round(flops / 1e9, 3)

    run = model
    if c["variant"] == "channels_last":
        model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if c["variant"] == "bf16"
           else contextlib.nullcontext())
    if c["variant"] == "compile":
        run = torch.compile(model)

    def step() -> None:
        with amp:
            loss, _ = loss_fn(run(x), tumour, has_seg, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if c["variant"] == "compile":
        t0 = time.perf_counter()
        try:
            step()
        except Exception as e:  # noqa: BLE001 - report, do not crash the suite
            res["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            return res
        res["compile_s"] = round(time.perf_counter() - t0, 2)
    wall, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    res["step_s"] = [round(v, 4) for v in wall]
    res["step_cpu_s"] = [round(v, 4) for v in cpu]
    res["peak_rss_mb"] = common.vm_hwm_mb()
    return res


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (the package's one check, oneDNN's). Without it torch emulates bf16:
    a 4096^3 matmul then takes minutes, and a bf16 training step says nothing about bf16 hardware."""
    from fedglioma.preprocess.hdbet import bf16_supported

    return bf16_supported("cpu")


def peak_child(threads: int, n: int = 4096, reps: int = 3) -> dict[str, Any]:
    """Best GFLOP/s of an ``n x n`` matmul in fp32, and in bf16 where it is native (else ``bf16_gflops`` None),
    with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "n": n, "bf16_gflops": None}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if native_bf16() else [])
    for name, dt in dtypes:
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        a @ b  # noqa: B018 - warm-up
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(reps))
        out[f"{name}_gflops"] = round(2 * n**3 / best / 1e9, 1)
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- parent


def summarise(results: list[dict], peaks: list[dict], batch: int) -> tuple[list[dict], dict[str, Any]]:
    """Per configuration: medians over repetitions; per-repetition ratios against the references."""
    peak_fp32 = common.median(p["fp32_gflops"] for p in peaks)
    peak_bf16 = common.median(p["bf16_gflops"] for p in peaks)  # None where bf16 is not native: median skips it
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["label"], []).append(r)
    flops = {lab: next((r["gflop_per_step"] for r in rs if r.get("gflop_per_step")), None) for lab, rs in by.items()}
    rows = []
    for lab, rs in by.items():
        ok = [r for r in rs if "step_s" in r]
        per_rep = [common.median(r["step_s"]) for r in ok]
        s = common.median(per_rep)
        cpu = common.median(common.median(r["step_cpu_s"]) for r in ok)
        r0 = rs[0]
        gf = flops.get(lab)
        if gf is None and r0["variant"] != "fp32":  # same math as the fp32 configuration
            gf = flops.get(lab.replace(f"-{r0['variant']}-", "-fp32-"))
        peak = peak_bf16 if r0["variant"] == "bf16" else peak_fp32
        rows.append({
            "config": lab, "net": r0["net"], "width": r0["width"], "depth": r0["depth"], "variant": r0["variant"],
            "threads": r0["threads"], "params": r0.get("params"), "batch": batch, "grid": "x".join(map(str, r0["grid"])),
            "n_reps": len(ok), "s_per_step": common.rnd(s), "samples_per_s": common.rnd(batch / s if s else None),
            "s_per_sample": common.rnd(s / batch if s else None), "cpu_s_per_step": common.rnd(cpu),
            "step_s_min": common.rnd(min((min(r["step_s"]) for r in ok), default=None)),
            "step_s_max": common.rnd(max((max(r["step_s"]) for r in ok), default=None)),
            "gflop_per_step": gf, "gflops": common.rnd(gf / s if gf and s else None, 2),
            "pct_of_peak": common.rnd(100 * gf / s / peak if gf and s and peak else None, 1),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=None),
            "compile_s": common.median(r.get("compile_s") for r in ok),
            "error": next((r["error"] for r in rs if "error" in r), ""),
        })

    def rep_ratios(a: str, b: str) -> list[float]:
        """Per repetition: samples/s of ``a`` over ``b`` (= step time of ``b`` over ``a``)."""
        ra = {r["rep"]: common.median(r["step_s"]) for r in by.get(a, []) if "step_s" in r}
        rb = {r["rep"]: common.median(r["step_s"]) for r in by.get(b, []) if "step_s" in r}
        return [rb[k] / ra[k] for k in ra if k in rb]

    ratios: dict[str, Any] = {}
    for r in rows:
        if r["net"] == "fedglioma" and r["variant"] == "fp32" and r["threads"] == 2:
            for ref in ("dynunet", "basicunet"):
                other = r["config"].replace("fedglioma-", f"{ref}-")
                v = rep_ratios(r["config"], other)
                if v:
                    ratios[f"{r['config']} / {other}"] = {"median": common.rnd(common.median(v)), "per_rep": [
                        common.rnd(x) for x in v]}
        if r["net"] == "fedglioma" and (r["variant"] != "fp32" or r["threads"] != 2):
            base = f"fedglioma-w{r['width']}d{r['depth']}-fp32-t2"
            v = rep_ratios(r["config"], base)
            if v:
                ratios[f"{r['config']} / {base}"] = {"median": common.rnd(common.median(v)),
                                                      "per_rep": [common.rnd(x) for x in v]}
    return rows, {"peak_fp32_gflops": peak_fp32, "peak_bf16_gflops": peak_bf16, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--grid", type=int, nargs=3, default=[48, 64, 48], help="network grid (demo: 48 64 48)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per child (default 2 quick, 3 full)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child")
    ap.add_argument("--_child", help="internal: run one configuration (JSON)")
    ap.add_argument("--_peak", type=int, help="internal: matmul peak with this many threads")
    a = ap.parse_args(argv)
    if a._child:
        spec = json.loads(a._child)
        print(json.dumps(child(spec["cfg"], spec["grid"], spec["batch"], spec["warmup"], spec["steps"],
                               spec["count_flops"])), flush=True)
        return 0
    if a._peak:
        print(json.dumps(peak_child(a._peak)), flush=True)
        return 0

    load0 = common.load_avg()
    reps = a.reps or (3 if a.quick else 5)
    steps = a.steps or (2 if a.quick else 3)
    cfgs = configs(a.quick)
    if not native_bf16():
        skipped = [label(c) for c in cfgs if c["variant"] == "bf16"]
        cfgs = [c for c in cfgs if c["variant"] != "bf16"]
        print(f"[{NAME}] no native bf16 on this CPU: skipped {', '.join(skipped)} and the bf16 peak", flush=True)
    results, peaks = [], []
    me = Path(__file__).resolve()
    for rep in range(reps):
        res = common.run_child([common.PYTHON, me, "--_peak", "2"], env=common.thread_env(2), timeout=600)
        if res["rc"] == 0:
            peaks.append({**common.last_json_line(res["stdout"]), "rep": rep})
        todo = [c for c in cfgs if rep == 0 or not c["once"]]
        k = rep % len(todo)
        for c in todo[k:] + todo[:k]:  # rotated: no configuration always runs first or after the same one
            spec = {"cfg": c, "grid": a.grid, "batch": a.batch, "warmup": a.warmup, "steps": steps,
                    "count_flops": rep == 0 and c["variant"] == "fp32"}
            load = common.load_avg()[0]
            env = common.thread_env(c["threads"])
            with tempfile.TemporaryDirectory(prefix="fgbench-inductor-") as cache:
                # a cold torch.compile: inductor's on-disk caches would make later compiles take seconds
                env["TORCHINDUCTOR_CACHE_DIR"] = cache
                res = common.run_child([common.PYTHON, me, "--_child", json.dumps(spec)], env=env, timeout=a.timeout)
            if res["rc"] != 0:
                out = {"label": label(c), **c, "grid": a.grid, "error": res["stdout"][-500:]}
            else:
                out = common.last_json_line(res["stdout"])
            out.update(rep=rep, load1=load, child_wall_s=res["wall_s"])
            results.append(out)
            msg = out.get("error") or f"{common.median(out['step_s']):.3f} s/step"
            print(f"[{NAME}] rep {rep} {out['label']}: {msg} (load {load})", flush=True)

    rows, extra = summarise(results, peaks, a.batch)
    base = "fedglioma-w8d3-fp32-t2"
    r = extra["ratios"]
    dyn = r.get(f"{base} / dynunet-w8d3-fp32-t2", {}).get("median")
    bas = r.get("fedglioma-w8d4-fp32-t2 / basicunet-w8d4-fp32-t2", {}).get("median")
    targets = [
        common.target(NAME, "samples/s fedglioma / MONAI DynUNet (same architecture), w8 d3", dyn, ">=", 1.0, "x"),
        common.target(NAME, "samples/s fedglioma / MONAI BasicUNet, w8 d4", bas, ">=", 1.0, "x"),
    ]
    if not a.quick:
        for w, d, ref in ((16, 4, "dynunet"), (16, 4, "basicunet")):
            v = r.get(f"fedglioma-w{w}d{d}-fp32-t2 / {ref}-w{w}d{d}-fp32-t2", {}).get("median")
            targets.append(common.target(NAME, f"samples/s fedglioma / MONAI {ref}, w{w} d{d}", v, ">=", 1.0, "x"))
    common.save(a.out, NAME, rows, targets,
                {"grid": a.grid, "batch": a.batch, "reps": reps, "steps": steps, "warmup": a.warmup,
                 "quick": a.quick}, load0, {**extra, "runs": results, "peaks": peaks})
    for row in rows:
        print(f"[{NAME}] {row['config']}: {row['s_per_step']} s/step, {row['samples_per_s']} samples/s, "
              f"{row['gflops']} GFLOP/s ({row['pct_of_peak']} % of peak), {row['peak_rss_mb']} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
