"""Preprocessing: seconds and peak memory per step per subject at 1 mm, tuned chain vs library defaults,
and the registration agreement of the two chains (mean landmark error in mm).

Subject: one ``fedglioma.synth`` head with skull at 1 mm (field of view 220 x 240 x 180 mm, int16 like scanner
files); T1, T2 and FLAIR are moved by known random rigid transforms (up to 6 degrees and 6 mm), so co-registration
has work to do and has a ground truth. Each step of ``fedglioma.preprocess`` runs in its own child process with
2 threads (OpenMP/ITK), like a Snakemake job of the workflow; its wall and CPU seconds and its own peak RSS
(``VmHWM``) are recorded. Chains:

- ``tuned``: the ``preprocess:`` section of ``config/config.yaml`` (coarse 2 mm working grids, short
  schedules, HD-BET ``fast``).
- ``default``: the libraries' defaults: ANTsPy ``Rigid`` / ``Affine`` with its own schedule (shrink 6/4/2/1,
  smoothing 3/2/1/0, iterations 2100/1200/1200/10, centre-of-mass initialisation for co-registration) at full
  resolution, no template mask; N4 with ANTsPy's defaults (shrink 4, 50 x 4 iterations, tolerance 1e-7);
  HD-BET ``accurate`` (5 folds) on the whole field of view, without test-time augmentation (HD-BET's CLI
  default adds 8-fold mirroring TTA, about 8x the network time again). ``--default-hdbet fast`` saves time
  (the default chain is then faster than it really is: the speed-up becomes a lower bound).

import, normalise and training_file have no library alternative: both chains run the same code. Steps are
interleaved (each step of both chains before the next step; the chain order alternates between repetitions).

Landmarks: 1000 points drawn from the ground-truth brain (co-registration: native T1c space, mapped to each
moving modality) and from the template brain mask (atlas: template space, mapped to the native T1c space), sent
through the transforms of both chains; the error is the mean (and max) distance in mm between the two images of
each point. Errors against the known ground truth are given too.

Usage::

    python benchmarks/preprocess_speed.py --quick --out /tmp/bench      # 1 repetition
    python benchmarks/preprocess_speed.py --reps 3
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import common  # type: ignore[no-redef]

NAME = "preprocess_speed"
IDS = {"site": "Bench", "subject": "001"}
MODS = ("T1", "T1c", "T2", "FLAIR")
STEPS = ("import", "coregister", "skullstrip", "register_atlas", "n4", "normalise", "training_file")
FOLDER = {"import": "01_import", "coregister": "02_coreg", "skullstrip": "03_skullstrip",
          "register_atlas": "04_atlas", "n4": "05_n4", "normalise": "06_normalise"}
PREV = {"coregister": "import", "skullstrip": "coregister", "register_atlas": "skullstrip", "n4": "register_atlas",
        "normalise": "n4", "training_file": "normalise"}
#: library defaults (ANTsPy ants.registration / n4_bias_field_correction, HD-BET) in the steps' parameter names
LIBRARY_DEFAULTS: dict[str, dict[str, Any]] = {
    "coregister": {"working_resolution_mm": None, "shrink": [6, 4, 2, 1], "smoothing": [3, 2, 1, 0],
                   "iterations": [2100, 1200, 1200, 10], "sampling": 32, "sampling_rate": 0.2, "init": "com"},
    "skullstrip": {"mode": "accurate", "tta": False, "crop_margin_mm": None},
    "register_atlas": {"working_resolution_mm": None, "use_template_mask": False, "shrink": [6, 4, 2, 1],
                       "smoothing": [3, 2, 1, 0], "iterations": [2100, 1200, 1200, 10], "sampling": 32,
                       "sampling_rate": 0.2},
    "n4": {"shrink_factor": 4, "iterations": [50, 50, 50, 50], "tolerance": 1e-7},
}
LPS = (-1.0, -1.0, 1.0)


def chain_params(config: Path, default_hdbet: str = "accurate") -> dict[str, dict[str, dict[str, Any]]]:
    """``{chain: {step: params}}``: tuned = config.yaml ``preprocess:``; default = tuned + library defaults.

    ``default_hdbet="fast"``: the default chain runs HD-BET ``fast`` (whole field of view) instead of ``accurate``
    (saves 1-3 min); the default chain is then faster than the real one, so the speed-up is a lower bound."""
    import yaml

    pre = (yaml.safe_load(config.read_text()) or {}).get("preprocess", {}) or {}
    tuned = {
        "import": dict(pre.get("import") or {}),
        "coregister": dict(pre.get("coregister") or {}),
        "skullstrip": {**dict(pre.get("skullstrip") or {}), "device": "cpu"},
        # the benchmark is about 1 mm preprocessing: template space at 1 mm whatever the demo uses
        "register_atlas": {**dict(pre.get("atlas") or {}), "resolution_mm": 1.0},
        "n4": dict(pre.get("n4") or {}),
        "normalise": dict(pre.get("normalise") or {}),
        "training_file": dict(pre.get("grid") or {}),
    }
    default = {k: {**v, **LIBRARY_DEFAULTS.get(k, {})} for k, v in tuned.items()}
    default["skullstrip"]["mode"] = default_hdbet
    default["skullstrip"]["precision"] = "fp32"  # the hd-bet package's own float32 network pass
    return {"tuned": tuned, "default": default}


# ----------------------------------------------------------------------------------------------- children


def prepare(work: Path, seed: int = 1) -> dict[str, Any]:
    """Render the 1 mm head, move T1/T2/FLAIR by known rigid transforms, write ``work/raw``."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from fedglioma.synth import SiteSpec, synthesize_subject

    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    spec = SiteSpec(name="Bench", voxel_size=(1.0, 1.0, 1.0), fov_mm=(220.0, 240.0, 180.0))
    t0 = time.perf_counter()
    s = synthesize_subject(spec, 0, seed=seed)
    rng = np.random.default_rng(seed)
    moves = {}
    for m in MODS:
        arr = s.images[m].astype(np.float32)
        if m != "T1c":
            k = np.eye(4)
            k[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-6, 6, 3), degrees=True).as_matrix()
            k[:3, 3] = rng.uniform(-6, 6, 3)
            moves[m] = k.tolist()
            # the moved image at world x shows the original at k^-1 x: feature p appears at k p
            vox = np.linalg.inv(s.affine) @ np.linalg.inv(k) @ s.affine
            arr = ndimage.affine_transform(arr, vox[:3, :3], vox[:3, 3], order=1)
        img = nib.Nifti1Image(np.clip(np.rint(arr), -32768, 32767).astype(np.int16), s.affine)
        nib.save(img, raw / f"{m}.nii.gz")
    nib.save(nib.Nifti1Image(s.seg, s.affine), raw / "seg.nii.gz")
    nib.save(nib.Nifti1Image(s.brain_mask, s.affine), raw / "brain_truth.nii.gz")
    info = {"moves": moves, "template_from_scanner": np.asarray(s.template_from_scanner).tolist(),
            "shape": list(s.images["T1c"].shape), "voxel_mm": 1.0, "render_s": round(time.perf_counter() - t0, 1)}
    (raw / "truth.json").write_text(json.dumps(info))
    return info


def run_step(work: Path, chain: str, step: str) -> dict[str, Any]:
    """Run one step of one chain in this process; timing and the peak RSS of this process."""
    import resource

    from fedglioma.preprocess import import_subject, n4, normalise, register_atlas, training_file
    from fedglioma.preprocess.coregister import coregister
    from fedglioma.preprocess.skullstrip import skullstrip

    p = json.loads((work / "chains.json").read_text())[chain][step]
    raw, sub = work / "raw", work / chain / "sub-001"
    out = sub / FOLDER[step] if step in FOLDER else sub.parent / "sub-001_train.npz"
    prev = sub / FOLDER[PREV[step]] if step in PREV else None
    shutil.rmtree(out, ignore_errors=True)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if step == "import":
        import_subject({m: raw / f"{m}.nii.gz" for m in MODS}, raw / "seg.nii.gz", [1, 2, 4], out, **IDS, **p)
    elif step == "coregister":
        coregister(prev, out, **IDS, **p)
    elif step == "skullstrip":
        skullstrip(prev, out, **IDS, **p)
    elif step == "register_atlas":
        register_atlas(prev, out, **IDS, **p)
    elif step == "n4":
        n4(prev, out, **IDS, **p)
    elif step == "normalise":
        normalise(prev, out, **IDS, **p)
    elif step == "training_file":
        training_file(prev, out, **IDS, grid_json=sub.parent / "sub-001_grid.json", **p)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"chain": chain, "step": step, "wall_s": round(wall, 2),
            "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
            "peak_rss_mb": common.vm_hwm_mb()}


def _ras_to_lps(p: Any) -> Any:
    import numpy as np

    return np.asarray(p, float) * np.asarray(LPS)


def map_points(sub: Path, files: list[str], pts_ras: Any) -> Any:
    """Map RAS world points from a registration's fixed space to its moving space through ANTs affine
    transform files (ITK: listed transforms apply last-first; each maps fixed -> moving points, LPS)."""
    import ants
    import numpy as np

    txs = []
    for f in files:
        if not str(f).endswith(".mat"):
            raise ValueError(f"only affine transforms are supported for landmarks, got {f}")
        txs.append(ants.read_transform(str(sub / f)))
    out = []
    for p in _ras_to_lps(pts_ras):
        q = tuple(float(v) for v in p)
        for tx in reversed(txs):
            q = tx.apply_to_point(q)
        out.append(q)
    return _ras_to_lps(np.asarray(out))


def accuracy(work: Path, n_points: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Landmark errors between the chains and against the ground truth; HD-BET Dice with the true brain."""
    import nibabel as nib
    import numpy as np

    from fedglioma.preprocess.templates import load_template

    rng = np.random.default_rng(seed)
    truth = json.loads((work / "raw" / "truth.json").read_text())
    brain = nib.load(work / "raw" / "brain_truth.nii.gz")
    b = np.asarray(brain.dataobj) > 0
    vox = np.argwhere(b)
    pts = nib.affines.apply_affine(brain.affine, vox[rng.choice(len(vox), n_points, replace=False)])
    states = {c: json.loads((work / c / "sub-001" / FOLDER["register_atlas"] / "state.json").read_text())
              for c in ("tuned", "default")}
    res: dict[str, Any] = {"n_points": n_points}

    def stats(d: Any) -> dict[str, float]:
        return {"mean_mm": round(float(np.mean(d)), 3), "max_mm": round(float(np.max(d)), 3)}

    coreg_means = []
    for m, k in truth["moves"].items():
        mapped = {c: map_points(work / c / "sub-001", states[c]["transforms"]["coregister"][m], pts) for c in states}
        true = nib.affines.apply_affine(np.asarray(k), pts)
        between = np.linalg.norm(mapped["tuned"] - mapped["default"], axis=1)
        coreg_means.append(float(np.mean(between)))
        res[f"coregister_{m}"] = {"tuned_vs_default": stats(between),
                                  **{f"{c}_vs_truth": stats(np.linalg.norm(mapped[c] - true, axis=1))
                                     for c in states}}
    res["coregister_worst_mean_mm"] = round(max(coreg_means), 3)

    tpl = load_template("MNI152", resolution_mm=1.0)
    tm = np.asarray(tpl.mask.dataobj) > 0
    tv = np.argwhere(tm)
    tpts = nib.affines.apply_affine(tpl.mask.affine, tv[rng.choice(len(tv), n_points, replace=False)])
    mapped = {c: map_points(work / c / "sub-001", states[c]["transforms"]["atlas"]["forward"], tpts) for c in states}
    true = nib.affines.apply_affine(np.linalg.inv(np.asarray(truth["template_from_scanner"])), tpts)
    between = np.linalg.norm(mapped["tuned"] - mapped["default"], axis=1)
    res["register_atlas"] = {"tuned_vs_default": stats(between),
                             **{f"{c}_vs_truth": stats(np.linalg.norm(mapped[c] - true, axis=1)) for c in states}}
    res["atlas_mean_mm"] = round(float(np.mean(between)), 3)
    for c in states:
        mask = np.asarray(nib.load(work / c / "sub-001" / FOLDER["skullstrip"] / "sub-001_desc-brain_mask.nii.gz")
                          .dataobj) > 0
        # the step works on the RAS-reoriented grid: compare in world space via reorientation of the truth
        truth_ras = np.asarray(nib.as_closest_canonical(brain).dataobj) > 0
        res[f"brain_dice_{c}"] = round(float(2 * (mask & truth_ras).sum() / (mask.sum() + truth_ras.sum())), 4)
    return res


# ----------------------------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--config", type=Path, default=common.REPO / "config" / "config.yaml",
                    help="config whose preprocess: section is the tuned chain")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default OUT/preprocess_work)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chains", nargs="+", default=["tuned", "default"], choices=("tuned", "default"))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--default-hdbet", default="accurate", choices=("accurate", "fast"),
                    help="HD-BET mode of the default chain (fast: quicker, the speed-up becomes a lower bound)")
    ap.add_argument("--_prepare", type=Path, help=argparse_hidden())
    ap.add_argument("--_step", nargs=3, metavar=("WORK", "CHAIN", "STEP"), help=argparse_hidden())
    ap.add_argument("--_accuracy", type=Path, help=argparse_hidden())
    a = ap.parse_args(argv)
    if a._prepare:
        print(json.dumps(prepare(a._prepare)), flush=True)
        return 0
    if a._step:
        print(json.dumps(run_step(Path(a._step[0]), a._step[1], a._step[2])), flush=True)
        return 0
    if a._accuracy:
        print(json.dumps(accuracy(a._accuracy)), flush=True)
        return 0

    load0 = common.load_avg()
    reps = a.reps or (1 if a.quick else 3)
    work = a.work or (a.out / "preprocess_work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = chain_params(a.config, a.default_hdbet)
    common.write_json(work / "chains.json", params)
    me = Path(__file__).resolve()
    env = common.thread_env(a.threads)
    res = common.run_child([common.PYTHON, me, "--_prepare", work], env=env, timeout=1800)
    if res["rc"] != 0:
        raise SystemExit(f"rendering the subject failed:\n{res['stdout'][-3000:]}")
    info = common.last_json_line(res["stdout"])
    print(f"[{NAME}] subject {info['shape']} at 1 mm rendered in {info['render_s']} s", flush=True)

    rows: list[dict[str, Any]] = []
    acc: list[dict[str, Any]] = []
    for rep in range(reps):
        order = a.chains if rep % 2 == 0 else list(reversed(a.chains))
        for step in STEPS:
            for chain in order:
                load = common.load_avg()[0]
                r = common.run_child([common.PYTHON, me, "--_step", work, chain, step], env=env, timeout=a.timeout)
                if r["rc"] != 0:
                    raise SystemExit(f"{chain} {step} failed:\n{r['stdout'][-3000:]}")
                row = {**common.last_json_line(r["stdout"]), "rep": rep, "load1": load,
                       "process_wall_s": r["wall_s"]}
                rows.append(row)
                print(f"[{NAME}] rep {rep} {chain:7s} {step:15s} {row['wall_s']:8.1f} s  cpu {row['cpu_s']:8.1f} s  "
                      f"{row['peak_rss_mb']:7.0f} MB  (load {load})", flush=True)
        if set(a.chains) == {"tuned", "default"}:
            r = common.run_child([common.PYTHON, me, "--_accuracy", work], env=env, timeout=1800)
            if r["rc"] != 0:
                raise SystemExit(f"accuracy failed:\n{r['stdout'][-3000:]}")
            acc.append(common.last_json_line(r["stdout"]))

    # per chain and step: medians over repetitions; the chain total is the median of the per-repetition sums
    summary: list[dict[str, Any]] = []
    totals: dict[str, dict[str, Any]] = {}
    for chain in a.chains:
        for step in STEPS:
            rs = [r for r in rows if r["chain"] == chain and r["step"] == step]
            summary.append({"chain": chain, "step": step, "n_reps": len(rs),
                            "wall_s": common.rnd(common.median(r["wall_s"] for r in rs), 1),
                            "cpu_s": common.rnd(common.median(r["cpu_s"] for r in rs), 1),
                            "process_wall_s": common.rnd(common.median(r["process_wall_s"] for r in rs), 1),
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)})
        sums = [sum(r["wall_s"] for r in rows if r["chain"] == chain and r["rep"] == k) for k in range(reps)]
        psums = [sum(r["process_wall_s"] for r in rows if r["chain"] == chain and r["rep"] == k) for k in range(reps)]
        cpus = [sum(r["cpu_s"] for r in rows if r["chain"] == chain and r["rep"] == k) for k in range(reps)]
        totals[chain] = {"wall_s": common.rnd(common.median(sums), 1), "cpu_s": common.rnd(common.median(cpus), 1),
                         "process_wall_s": common.rnd(common.median(psums), 1),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rows if r["chain"] == chain)}
        summary.append({"chain": chain, "step": "TOTAL", "n_reps": reps, **totals[chain]})
    speedups = []
    if len(totals) == 2:
        for k in range(reps):
            t = sum(r["wall_s"] for r in rows if r["chain"] == "tuned" and r["rep"] == k)
            d = sum(r["wall_s"] for r in rows if r["chain"] == "default" and r["rep"] == k)
            speedups.append(d / t)
    speedup = common.median(speedups)
    coreg_err = common.median(x["coregister_worst_mean_mm"] for x in acc) if acc else None
    atlas_err = common.median(x["atlas_mean_mm"] for x in acc) if acc else None
    tuned_total = totals.get("tuned", {}).get("wall_s")
    targets = [
        common.target(NAME, "tuned whole chain per subject (1 mm, HD-BET fast, 7 steps, 2 threads)", tuned_total,
                      "<=", 90.0, "s"),
        common.target(NAME, "speed-up of the tuned chain over the library-default chain", speedup, ">=", 2.0, "x",
                      "lower bound: default chain with HD-BET fast" if a.default_hdbet == "fast" else ""),
        common.target(NAME, "co-registration: mean landmark distance tuned vs default (worst modality)", coreg_err,
                      "<=", 0.5, "mm"),
        common.target(NAME, "atlas registration: mean landmark distance tuned vs default", atlas_err, "<=", 0.5,
                      "mm"),
    ]
    common.save(a.out, NAME, summary, targets,
                {"reps": reps, "threads": a.threads, "config": str(a.config), "chains": params,
                 "subject": info, "quick": a.quick},
                load0, {"runs": rows, "accuracy": acc, "speedup_per_rep": [round(s, 3) for s in speedups]})
    if acc:
        print(f"[{NAME}] accuracy: {json.dumps(acc[-1])}", flush=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
