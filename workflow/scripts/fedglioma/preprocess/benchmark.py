"""Benchmark of the preprocessing chain (not a test): seconds, CPU seconds and peak memory per step.

Renders one ``fedglioma.synth`` head (1 mm by default), moves T1, T2 and FLAIR by known rigid
transforms, then runs every step in its own process, as Snakemake jobs do, and reports the
registration errors against the known motion and the brain-mask Dice::

    python -m fedglioma.preprocess.benchmark /tmp/bench                 # tuned defaults
    python -m fedglioma.preprocess.benchmark /tmp/bench --variant tuned default   # + ANTsPy defaults

Every step and the rendering run in child processes of a small parent (Linux keeps a
process's peak RSS across exec, so a big parent would inflate the children's numbers).
Variant ``default`` reruns coregister, register_atlas and n4 with ANTsPy's own defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IDS = {"site": "Bench", "subject": "001"}
STEPS = ("import", "coregister", "skullstrip", "register_atlas", "n4", "normalise", "training_file", "qc")
LIBRARY_DEFAULTS: dict[str, dict] = {
    "coregister": {"working_resolution_mm": None, "shrink": [6, 4, 2, 1], "smoothing": [3, 2, 1, 0],
                   "iterations": [2100, 1200, 1200, 10], "init": "com"},
    "register_atlas": {"working_resolution_mm": None, "use_template_mask": False, "shrink": [6, 4, 2, 1],
                       "smoothing": [3, 2, 1, 0], "iterations": [2100, 1200, 1200, 10]},
    "n4": {"shrink_factor": 4, "iterations": [50, 50, 50, 50], "tolerance": 1e-7},
}


def _rigid(rng: np.random.Generator, deg: float, mm: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-deg, deg, 3), degrees=True).as_matrix()
    out[:3, 3] = rng.uniform(-mm, mm, 3)
    return out


def prepare(work: Path, voxel: float, seed: int = 1) -> None:
    """Render the subject and write the raw files (+ known motions and pose) under ``work/raw``."""
    import nibabel as nib
    from scipy import ndimage

    from fedglioma.synth import SiteSpec, synthesize_subject

    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    spec = SiteSpec(name="Bench", voxel_size=(voxel,) * 3, fov_mm=(220.0, 240.0, 180.0))
    s = synthesize_subject(spec, 0, seed=seed)
    rng = np.random.default_rng(seed)
    moves = {}
    for m, data in s.images.items():
        arr = data.astype(np.float32)
        if m != "T1c":
            k = _rigid(rng, 6.0, 6.0)
            moves[m] = k.tolist()
            vox = np.linalg.inv(s.affine) @ np.linalg.inv(k) @ s.affine
            arr = ndimage.affine_transform(arr, vox[:3, :3], vox[:3, 3], order=1).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, s.affine), raw / f"{m}.nii.gz")
    nib.save(nib.Nifti1Image(s.seg, s.affine), raw / "seg.nii.gz")
    nib.save(nib.Nifti1Image(s.brain_mask, s.affine), raw / "brain_truth.nii.gz")
    (raw / "truth.json").write_text(json.dumps({"moves": moves, "template_from_scanner": s.template_from_scanner.tolist()}))


def run_step(work: Path, variant: str, step: str, skullstrip_method: str) -> dict:
    """Run one step in this process; returns timing and memory."""
    from fedglioma.preprocess import (
        coregister,
        import_subject,
        n4,
        normalise,
        qc,
        register_atlas,
        skullstrip,
        training_file,
    )

    raw, s = work / "raw", work / variant / "sub-001"
    p = LIBRARY_DEFAULTS.get(step, {}) if variant == "default" else {}
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if step == "import":
        import_subject({m: raw / f"{m}.nii.gz" for m in ("T1", "T1c", "T2", "FLAIR")}, raw / "seg.nii.gz", [1, 2, 4],
                       s / "01_import", **IDS)
    elif step == "coregister":
        coregister(s / "01_import", s / "02_coreg", **IDS, **p)
    elif step == "skullstrip":
        skullstrip(s / "02_coreg", s / "03_skullstrip", method=skullstrip_method, **IDS)
    elif step == "register_atlas":
        register_atlas(s / "03_skullstrip", s / "04_atlas", **IDS, **p)
    elif step == "n4":
        n4(s / "04_atlas", s / "05_n4", **IDS, **p)
    elif step == "normalise":
        normalise(s / "05_n4", s / "06_normalise", **IDS)
    elif step == "training_file":
        training_file(s / "06_normalise", s.parent / "sub-001_train.npz", grid_spacing=1.5, grid_shape=128, **IDS)
    elif step == "qc":
        qc(s, s.parent / "qc.png", s.parent / "qc.json")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"variant": variant, "step": step, "seconds": round(time.perf_counter() - t0, 2),
            "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 1),
            "peak_rss_gb": round(r1.ru_maxrss / 1e6, 2), "load1": round(os.getloadavg()[0], 2)}


def accuracy(work: Path, variant: str) -> dict:
    """Registration errors against the known motion, and HD-BET Dice against the ground truth."""
    import ants
    import nibabel as nib

    s = work / variant / "sub-001"
    lps = np.diag([-1.0, -1.0, 1.0])
    truth = json.loads((work / "raw" / "truth.json").read_text())
    st = json.loads((s / "04_atlas" / "state.json").read_text())
    brain = nib.load(work / "raw" / "brain_truth.nii.gz")
    b = np.asarray(brain.dataobj) > 0
    pts = nib.affines.apply_affine(brain.affine, np.argwhere(b)[::500])
    out: dict = {"variant": variant}
    for m, k in truth["moves"].items():
        tx = ants.read_transform(str(s / st["transforms"]["coregister"][m][0]))
        kinv = np.linalg.inv(np.asarray(k))
        err = [np.linalg.norm((kinv @ np.r_[lps @ np.asarray(tx.apply_to_point(tuple(lps @ p))), 1.0])[:3] - p)
               for p in pts]
        out[f"coreg_{m}_mm"] = [round(float(np.mean(err)), 3), round(float(np.max(err)), 3)]
    mask = np.asarray(nib.load(s / "03_skullstrip" / "sub-001_desc-brain_mask.nii.gz").dataobj) > 0
    out["brain_dice"] = round(float(2 * (mask & b).sum() / (mask.sum() + b.sum())), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--variant", nargs="+", default=["tuned"], choices=("tuned", "default"))
    ap.add_argument("--voxel", type=float, default=1.0, help="voxel size of the rendered head (mm)")
    ap.add_argument("--skullstrip-method", default="hdbet", choices=("hdbet", "atlas"))
    ap.add_argument("--_step", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_prepare", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._prepare:
        prepare(a.work, a.voxel)
        return 0
    if a._step:
        print(json.dumps(run_step(a.work, a._step[0], a._step[1], a.skullstrip_method)), flush=True)
        return 0
    if not (a.work / "raw" / "truth.json").is_file():
        # in a child process: on Linux the peak RSS of a process survives exec into its children
        subprocess.run([sys.executable, "-m", "fedglioma.preprocess.benchmark", str(a.work), "--_prepare",
                        "--voxel", str(a.voxel)], check=True)
    for variant in a.variant:
        steps = list(STEPS)
        if variant == "default":
            if not (a.work / "tuned" / "sub-001" / "01_import").is_dir():
                raise SystemExit("run the tuned variant first")
            shutil.rmtree(a.work / "default", ignore_errors=True)
            shutil.copytree(a.work / "tuned" / "sub-001" / "01_import", a.work / "default" / "sub-001" / "01_import")
            steps = ["coregister", "skullstrip", "register_atlas", "n4"]
        else:
            shutil.rmtree(a.work / variant, ignore_errors=True)
        for step in steps:
            subprocess.run([sys.executable, "-m", "fedglioma.preprocess.benchmark", str(a.work), "--_step", variant,
                            step, "--skullstrip-method", a.skullstrip_method], check=True)
        print(json.dumps(accuracy(a.work, variant)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
