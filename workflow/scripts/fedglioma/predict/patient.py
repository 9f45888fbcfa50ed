"""Prediction on one new patient: raw NIfTI files or DICOM series in, a result a person can read out.

``fedglioma predict patient`` (:func:`predict_patient`) and the rule ``predict_subject`` of a site with role
``predict`` (:func:`predict_site_subject`, ``fedglioma predict subject``) both call :func:`run_prediction`:

1. the bundle is verified (:func:`fedglioma.predict.bundle.load_bundle`);
2. DICOM series are converted with dcm2niix (:mod:`fedglioma.io.dicom`), inside the work folder;
3. the training chain runs with the bundle's recipe (:func:`fedglioma.preprocess.chain.run_chain`: import,
   co-registration, HD-BET, atlas registration, N4, normalisation), then the network-grid file
   (:func:`fedglioma.preprocess.grid.training_file`) and QC (:func:`fedglioma.preprocess.qc.qc`);
4. the network runs (:func:`fedglioma.train.local.predict`) and the tumour probability is mapped back onto the
   input T1c's grid (:func:`fedglioma.preprocess.grid.native_image`) and thresholded there, as the external
   evaluation does;
5. ``prediction.json``, the native-space mask and a one-page HTML + PNG (:mod:`fedglioma.predict.page`) are
   written into the output folder in one atomic step: a failure leaves no output folder behind.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedglioma import __version__
from fedglioma.atomic import atomic_dir, atomic_path, write_json
from fedglioma.constants import ID_PATTERN, MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.io.files import read_json

log = logging.getLogger(__name__)

PREDICTION = "prediction.json"
PAGE_HTML, PAGE_PNG = "prediction.html", "prediction.png"
#: Subject IDs become file names: letters, digits, '-' and '_' only (never a patient name).
SUBJECT_ID = re.compile(ID_PATTERN)

#: How each marker's call reads (positive, negative).
CALLS: dict[str, tuple[str, str]] = {
    "idh": ("IDH-mutant", "IDH-wild-type"),
    "codeletion": ("1p/19q-codeleted", "1p/19q-intact"),
    "mgmt": ("MGMT-methylated", "MGMT-unmethylated"),
    "grade": ("grade 4", "grade 2-3"),
}


def mask_name(subject: str) -> str:
    """File name of the native-space whole-tumour mask."""
    return f"sub-{subject}_desc-tumour_mask.nii.gz"


# ------------------------------------------------------------------------------------------------ inputs


def parse_series(items: Sequence[str], *, subject: str | None = None) -> dict[str, int | str]:
    """``MODALITY=NUMBER`` or ``MODALITY=REGEX`` items (``--series T1c=7 --series 'FLAIR=ax.*flair'``)."""
    out: dict[str, int | str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in MODALITIES or not value:
            raise InputError(f"--series expects MODALITY=NUMBER or MODALITY=PATTERN with MODALITY one of "
                             f"{', '.join(MODALITIES)}, got {item!r}", subject=subject,
                             fix="e.g. --series T1c=7 --series 'FLAIR=ax.*flair'")
        if name in out:
            raise InputError(f"--series names {name} twice", subject=subject)
        out[name] = int(value) if value.isdigit() else value
    return out


def _nifti_inputs(files: Mapping[str, str | None], *, site: str | None, subject: str) -> dict[str, Path]:
    """The four sequences' files, checked: each given, existing, a 3D image, no file given twice."""
    missing = [m for m in MODALITIES if not files.get(m)]
    if missing:
        raise InputError(f"missing sequence(s) {', '.join(missing)}; all of {', '.join(MODALITIES)} are needed",
                         site=site, subject=subject,
                         fix="give --t1 --t1c --t2 --flair (NIfTI files) or --dicom FOLDER")
    paths = {m: Path(str(files[m])) for m in MODALITIES}
    seen: dict[Path, str] = {}
    for m, p in paths.items():
        if not p.is_file():
            raise InputError(f"{m} image not found", site=site, subject=subject, file=p)
        key = p.resolve()
        if key in seen:
            raise InputError(f"the same file is given for {seen[key]} and {m}", site=site, subject=subject,
                             file=p, fix=f"give the {m} sequence's own file")
        seen[key] = m
    return paths


def _check_output(out: Path, subject: str) -> None:
    """Refuse an output folder that holds anything but this patient's earlier prediction."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError("the output path exists and is not a folder", subject=subject, file=out,
                         fix="choose another --out")
    if not any(out.iterdir()):
        return
    previous = out / PREDICTION
    if previous.is_file():
        try:
            other = str(read_json(previous, what="earlier prediction").get("subject"))
        except InputError:
            other = "?"
        if other == subject:
            return  # the same patient again: replaced as a whole
        raise InputError(f"the output folder holds the results of another patient ({other})", subject=subject,
                         file=out, fix="give each patient their own --out folder")
    raise InputError("the output folder is not empty and holds no earlier prediction of this patient",
                     subject=subject, file=out, fix="give an empty or new --out folder")


def _check_brain(subject_dir: Path, qc_thresholds: Mapping[str, Any], *, site: str | None, subject: str,
                 skull_stripped: bool, image: Path | None = None) -> float:
    """The skull-stripped brain's volume in mL; refuses an empty or implausible mask (not a head, or a failed
    skull stripping), with the bundle's QC range, measured as QC measures it. ``image`` is the input the error
    names (the T1c given)."""
    import nibabel as nib

    from fedglioma.preprocess.common import voxel_volume_ml
    from fedglioma.preprocess.qc import find_step_dir

    step = find_step_dir(subject_dir, "skullstrip")
    mask_file = None if step is None else next(step.glob("*_desc-brain_mask.nii.gz"), None)
    if mask_file is None:
        raise InputError("skull stripping wrote no brain mask", site=site, subject=subject, file=step)
    img = nib.load(str(mask_file))
    ml = float((np.asarray(img.dataobj) > 0).sum()) * voxel_volume_ml(img)
    lo, hi = float(qc_thresholds.get("brain_ml_min", 0)), float(qc_thresholds.get("brain_ml_max", np.inf))
    if not lo <= ml <= hi:
        hint = ("the images were declared skull-stripped: check that they are" if skull_stripped else
                "check that the T1c is a head MRI of this patient; if the images are already skull-stripped, "
                "pass --skull-stripped")
        raise InputError(f"the brain mask is {'empty' if ml == 0 else 'implausible'}: {ml:.0f} mL (a head gives "
                         f"{lo:.0f}-{hi:.0f} mL): not a head, or skull stripping failed", site=site,
                         subject=subject, file=image or mask_file, fix=hint)
    return ml


# ------------------------------------------------------------------------------------------------- core


def marker_calls(probs: Mapping[str, Any], thresholds: Mapping[str, Any], endpoints: Mapping[str, Any]) -> dict[str, Any]:
    """Each marker's probability and its call at the bundle's threshold (``None``: no threshold was fixed)."""
    from fedglioma.evaluate.site import MARKER_LABEL, MARKER_NAME, normalise_thresholds, threshold_reasons

    cut = normalise_thresholds(thresholds)
    reasons = threshold_reasons(thresholds)
    grade = [float(p) for p in probs["grade"]]
    scores = {"idh": float(probs["idh"]), "codeletion": float(probs["codeletion"]), "mgmt": float(probs["mgmt"]),
              "grade": grade[2]}
    out: dict[str, Any] = {}
    for marker, p in scores.items():
        t = cut.get(marker)
        pos, neg = CALLS[marker]
        entry: dict[str, Any] = {"name": MARKER_NAME[marker], "endpoint": MARKER_LABEL[marker], "probability": p,
                                 "threshold": t, "call": None if t is None else (pos if p >= t else neg)}
        if t is None:
            entry["no_call_reason"] = reasons.get(marker, "no threshold was fixed on the training sites")
        out[marker] = entry
    out["grade"]["probabilities"] = {"2": grade[0], "3": grade[1], "4": grade[2]}
    if endpoints.get("codeletion") == "idh_mutant":
        out["codeletion"]["note"] = "defined within IDH-mutant gliomas: read it only for an IDH-mutant call"
    return out


def run_prediction(images: Mapping[str, str | Path] | None, out: str | Path, bundle: str | Path, *, subject: str,
                   site: str | None = None, dicom: str | Path | None = None,
                   series: Mapping[str, int | str] | None = None, declared: Declared | None = None,
                   template_transform: str | Path | None = None, keep_intermediates: bool = False,
                   hdbet_runtime: str | None = None) -> dict[str, Any]:
    """Predict one patient into the folder ``out`` (see the module docstring); returns ``prediction.json``.

    Exactly one of ``images`` (modality -> NIfTI file) and ``dicom`` (a folder of the exam's series) is given.
    ``hdbet_runtime`` replaces the recipe's ``skullstrip.runtime`` (how HD-BET's network runs on this machine, not
    what it computes: masks agree to Dice >= 0.999, docs/benchmarks.md section 8).
    """
    import nibabel as nib

    from fedglioma import metrics
    from fedglioma.predict.bundle import load_bundle
    from fedglioma.predict.page import write_page
    from fedglioma.preprocess.chain import run_chain
    from fedglioma.preprocess.grid import native_mask, training_file
    from fedglioma.preprocess.qc import qc as qc_subject
    from fedglioma.train.local import predict

    start = time.perf_counter()
    if not SUBJECT_ID.match(subject or ""):
        raise InputError(f"subject ID {subject!r} must hold letters, digits, '-' and '_' only (it names the "
                         "output files; never use a patient's name)", site=site, fix="give a pseudonymous --subject")
    if (images is None) == (dicom is None):
        raise InputError("give either the four NIfTI files or one DICOM folder", site=site, subject=subject,
                         fix="--t1 --t1c --t2 --flair, or --dicom FOLDER")
    out = Path(out)
    _check_output(out, subject)
    declared = declared or Declared()
    timings: dict[str, float] = {}

    def timed(step: str, seconds: float) -> None:
        timings[step] = round(timings.get(step, 0.0) + seconds, 2)

    t0 = time.perf_counter()
    model_bundle = load_bundle(bundle)
    recipe = model_bundle.preprocess_cfg
    if hdbet_runtime is not None:
        from fedglioma.settings import SkullstripConfig, section

        skullstrip = {**recipe["skullstrip"], "runtime": hdbet_runtime}
        recipe = {**recipe, "skullstrip": section(SkullstripConfig, skullstrip, "preprocess.skullstrip")
                  .model_dump(mode="json")}
    timed("load_bundle", time.perf_counter() - t0)
    with atomic_dir(out) as tmp:
        work = tmp / "work"
        inputs: dict[str, Any]
        if dicom is not None:
            from fedglioma.io.dicom import convert_exam

            t0 = time.perf_counter()
            raw = convert_exam(Path(dicom), work / "dicom", subject=subject, series=series)
            timed("dicom", time.perf_counter() - t0)
            inputs = {"dicom": Path(dicom).name, "series": dict(series or {})}
        else:
            assert images is not None
            raw = _nifti_inputs({m: (str(images[m]) if images.get(m) else None) for m in MODALITIES},
                                site=site, subject=subject)
            inputs = {m: Path(p).name for m, p in raw.items()}
        subject_dir = work / f"sub-{subject}"
        label = site or "patient"

        def after_step(step: str, seconds: float) -> None:
            timed(step, seconds)
            if step == "skullstrip":  # a fresh work folder: every step runs; stop before the costly ones
                _check_brain(subject_dir, model_bundle.qc_thresholds, site=site, subject=subject,
                             skull_stripped=declared.skull_stripped, image=raw["T1c"])

        final = run_chain(raw, None, subject_dir, site=label, subject=subject, declared=declared,
                          preprocess_cfg=recipe, template_transform=template_transform, on_step=after_step)
        t0 = time.perf_counter()
        npz, grid = work / f"sub-{subject}_input.npz", work / f"sub-{subject}_grid.json"
        training_file(final, npz, site=label, subject=subject, grid_json=grid,
                      **dict(model_bundle.preprocess_cfg.get("grid") or {}))
        timed("network_grid", time.perf_counter() - t0)
        t0 = time.perf_counter()
        qc_row = qc_subject(subject_dir, work / f"sub-{subject}_qc.png", work / f"sub-{subject}_qc.json",
                            thresholds=model_bundle.qc_thresholds, site=label, subject=subject)
        timed("qc", time.perf_counter() - t0)
        t0 = time.perf_counter()
        with np.load(npz, allow_pickle=False) as z:
            image = z["image"]
        seg_prob, probs = predict(model_bundle.model(), image)
        timed("network", time.perf_counter() - t0)
        t0 = time.perf_counter()
        mask_img = native_mask(seg_prob, subject_dir, grid)
        mask = np.asarray(mask_img.dataobj)
        t1c = nib.load(str(raw["T1c"]))
        if mask.shape != t1c.shape[:3] or not np.allclose(mask_img.affine, t1c.affine, atol=1e-4):
            raise RuntimeError(f"the native mask {mask.shape} does not lie on the input T1c grid {t1c.shape[:3]}")
        with atomic_path(tmp / mask_name(subject)) as m:
            nib.save(mask_img, str(m))
        volume_ml = metrics.volume_ml(mask, t1c.header.get_zooms()[:3])  # as the evaluation's volume difference
        timed("native_mask", time.perf_counter() - t0)
        doc: dict[str, Any] = {
            "subject": subject,
            "site": site,
            "fedglioma_version": __version__,
            "bundle": {"name": model_bundle.name, "file": model_bundle.path.name, "sha256": model_bundle.sha256,
                       "arm": model_bundle.manifest["model"]["arm"], "round": model_bundle.manifest["model"]["round"],
                       "synthetic": bool(model_bundle.manifest.get("synthetic"))},
            "inputs": inputs,
            "declared": {"skull_stripped": declared.skull_stripped, "coregistered": declared.coregistered,
                         "space": declared.space},
            "hdbet_runtime": recipe["skullstrip"].get("runtime"),
            "tumour": {"mask": mask_name(subject), "volume_ml": round(volume_ml, 2),
                       "grid": {"shape": list(mask.shape), "affine": np.asarray(t1c.affine).round(6).tolist()}},
            "markers": marker_calls(probs, model_bundle.thresholds, model_bundle.manifest.get("endpoints") or {}),
            "qc": {"flagged": bool(qc_row.get("flagged")), "reasons": list(qc_row.get("reasons") or []),
                   "brain_volume_ml": qc_row["brain_volume_ml"]},
            "use": ("synthetic demo model: not for clinical use" if model_bundle.manifest.get("synthetic") else
                    "research use only: not for clinical decisions"),
        }
        t0 = time.perf_counter()
        doc["seconds"] = timings  # the page shows the time up to it
        timings["total"] = round(t0 - start, 2)
        write_page(doc, raw["T1c"], tmp / mask_name(subject), tmp / PAGE_HTML, tmp / PAGE_PNG)
        timed("page", time.perf_counter() - t0)
        timings["total"] = round(time.perf_counter() - start, 2)
        write_json(tmp / PREDICTION, doc)
        if not keep_intermediates:
            shutil.rmtree(work)
    log.info("%s: tumour %.1f mL, %s; %s (%.0f s)", subject, volume_ml,
             ", ".join(f"{m['name']} {m['probability']:.2f}" for m in doc["markers"].values()),
             "QC flagged: " + "; ".join(doc["qc"]["reasons"]) if doc["qc"]["flagged"] else "QC passed",
             timings["total"])
    return doc


# ------------------------------------------------------------------------------------------ entry points


def predict_patient(bundle: str, out: str, *, subject: str, t1: str | None = None, t1c: str | None = None,
                    t2: str | None = None, flair: str | None = None, dicom: str | None = None,
                    series: Sequence[str] = (), skull_stripped: bool = False, coregistered: bool = False,
                    space: str = "native", template_transform: str | None = None,
                    keep_intermediates: bool = False, hdbet_runtime: str | None = None, threads: int = 1) -> None:
    """``fedglioma predict patient``: one new patient, from NIfTI files or a DICOM folder, with a model bundle.

    Args:
        bundle: the model bundle (``results/model/fedglioma-<name>.zip``).
        out: output folder (new, empty, or this patient's earlier prediction, which is replaced).
        subject: the patient's pseudonymous ID (names the output files).
        t1, t1c, t2, flair: the four sequences as NIfTI files.
        dicom: instead of the files, a folder holding the exam's DICOM series (converted with dcm2niix).
        series: with --dicom, which series is which: MODALITY=SERIES_NUMBER or MODALITY=DESCRIPTION_REGEX.
        skull_stripped: the images are already brain-extracted (HD-BET is skipped).
        coregistered: the sequences are already co-registered to the T1c.
        space: native, or the template the images are already registered to (MNI152, SRI24).
        template_transform: folder of the template-to-template transform, for images in another template.
        keep_intermediates: keep the preprocessing step folders (work/) for debugging.
        hdbet_runtime: run HD-BET's network with torch or openvino on this machine (default: the bundle's
            recipe); openvino is about 1.5x faster on CPUs with bf16, same mask to Dice >= 0.999.
        threads: CPU threads.
    """
    images = {"T1": t1, "T1c": t1c, "T2": t2, "FLAIR": flair}
    if dicom is not None and any(images.values()):
        raise InputError("give either the NIfTI files or --dicom, not both", subject=subject)
    if dicom is None and series:
        raise ConfigError("--series applies to --dicom input only")
    run_prediction(None if dicom is not None else images, out, bundle, subject=subject, dicom=dicom,
                   series=parse_series(series, subject=subject) if series else None,
                   declared=Declared(skull_stripped=skull_stripped, coregistered=coregistered, space=space),
                   template_transform=template_transform, keep_intermediates=keep_intermediates,
                   hdbet_runtime=hdbet_runtime)


def predict_site_subject(row: Any, subject: str, bundle: str, out: str, *, layouts_cfg: Mapping[str, Any],
                         keep_intermediates: bool = False, template_transform: str | None = None) -> None:
    """Rule ``predict_subject`` / ``fedglioma predict subject``: one patient of a site with role ``predict`` (its
    images found in the site's layout; what the site declares applies), into ``out``.

    Args:
        row: the site's ``sites.tsv`` row.
        subject: subject ID.
        bundle: the model bundle.
        out: the patient's prediction folder (``results/sites/{site}/predictions/sub-{subject}``).
        layouts_cfg: the config's ``layouts`` section.
        keep_intermediates: keep the preprocessing step folders (work/).
        template_transform: folder of the template-to-template transform, for a site in another template space.
    """
    from fedglioma.config import layout_options
    from fedglioma.preprocess.chain import raw_files

    raw, _ = raw_files(row, subject, layout_options(row, layouts_cfg))
    run_prediction(raw, out, bundle, subject=subject, site=row.site, declared=row.declared,
                   template_transform=template_transform, keep_intermediates=keep_intermediates)


def predict_table(predictions: Sequence[str], table: str) -> None:
    """Rule ``predict_table`` / ``fedglioma predict table``: one row per predicted patient of a site (it stays at
    the site): tumour volume, each marker's probability and call, QC.

    Args:
        predictions: the patients' prediction folders.
        table: the TSV to write.
    """
    import pandas as pd

    rows = []
    for folder in predictions:
        doc = read_json(Path(folder) / PREDICTION, what="prediction")
        row: dict[str, Any] = {"subject": doc["subject"], "tumour_volume_ml": doc["tumour"]["volume_ml"]}
        for marker, m in doc["markers"].items():
            row[f"p_{marker}"] = m["probability"]
            row[f"call_{marker}"] = m["call"] or ""
        row.update({"qc_flagged": doc["qc"]["flagged"], "qc_reasons": "; ".join(doc["qc"]["reasons"]),
                    "bundle_sha256": doc["bundle"]["sha256"]})
        rows.append(row)
    with atomic_path(table) as tmp:
        pd.DataFrame(rows).sort_values("subject").to_csv(tmp, sep="\t", index=False)
