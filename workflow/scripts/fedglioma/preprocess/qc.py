"""Step 9, quality control: tri-planar figure, QC row with automatic flags, and the site table.

Step folders are found by the step names recorded in their state.json, not by folder names.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from fedglioma.atomic import atomic_path, write_json
from fedglioma.constants import MODALITIES
from fedglioma.errors import InputError
from fedglioma.io.files import read_json, read_tsv
from fedglioma.metrics import dice
from fedglioma.preprocess import qc_measures as measures
from fedglioma.preprocess.common import (
    REFERENCE,
    STATE_NAME,
    Subject,
    brain_name,
    image_name,
    nib_load_checked,
    read_state,
    to_ants,
    tumour_name,
    voxel_volume_ml,
)
from fedglioma.settings import QcConfig, QcThresholds, section, section_params

log = logging.getLogger("fedglioma.preprocess.qc")

COLUMNS = ("site", "subject", "brain_volume_ml", "template_dice", "ventricle_contrast", "template_ncc", "snr",
           "tumour_in_brain", "sequence_contrast", "sequence_pair", "skipped", "flagged", "reasons")


def find_step_dir(subject_dir: Path, step: str) -> Path | None:
    """The step folder whose state.json ends with step ``step`` (None if there is none)."""
    found = None
    for d in sorted(Path(subject_dir).iterdir()):
        f = d / STATE_NAME
        if d.is_dir() and not d.name.startswith(".") and f.is_file():
            steps = json.loads(f.read_text()).get("steps", [])
            if steps and steps[-1].get("name") == step:
                found = d
    return found


# --------------------------------------------------------------------------- metrics


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson) of two images inside ``mask``."""
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def snr(image: np.ndarray, brain: np.ndarray, *, margin: int = 3) -> float | None:
    """Signal-to-noise ratio of an image with its air background: mean brain signal over the noise
    sigma, estimated from the air (outside the head, ``margin`` voxels away from it) with the
    Rayleigh correction (sigma = 1.526 x std of magnitude noise). The head is the largest component
    above 10% of the range between the border median and the 99th percentile, holes filled.
    Computed on every second voxel. None without enough air or with a constant background
    (already skull-stripped or zero-filled data)."""
    x = np.asarray(image, dtype=np.float32)[::2, ::2, ::2]
    inside = (np.asarray(brain) > 0)[::2, ::2, ::2]
    if not inside.any():
        return None
    border = np.concatenate([x[0].ravel(), x[-1].ravel(), x[:, 0].ravel(), x[:, -1].ravel(),
                             x[:, :, 0].ravel(), x[:, :, -1].ravel()])
    lo, hi = float(np.median(border)), float(np.percentile(x, 99))
    lab, n = ndimage.label(x > lo + 0.1 * (hi - lo))
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    head = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1)) | inside
    air = ~ndimage.binary_dilation(head, iterations=margin)
    bg = x[air]
    if bg.size < 500:
        return None
    sd = float(bg.std())
    if sd <= 1e-6 * max(abs(float(x[inside].mean())), 1e-12):
        return None
    return float(x[inside].mean() / (1.526 * sd))


def _on_grid(
    template: nib.Nifti1Image, template_mask: nib.Nifti1Image, reference: nib.Nifti1Image
) -> tuple[np.ndarray, np.ndarray]:
    """Template image and brain mask on ``reference``'s grid: as they are when the grids agree (the usual case:
    the final images are in template space), else resampled with ANTsPy (imported only then)."""
    if template.shape[:3] == reference.shape[:3] and np.allclose(template.affine, reference.affine, atol=1e-4):
        return np.asarray(template.dataobj, dtype=np.float32), np.asarray(template_mask.dataobj) > 0
    import ants

    target = to_ants(np.zeros(reference.shape[:3], np.float32), reference.affine)
    t_img = ants.resample_image_to_target(to_ants(template), target, interp_type="linear").numpy()
    t_msk = ants.resample_image_to_target(to_ants(template_mask), target, interp_type="nearestNeighbor").numpy() > 0
    return t_img, t_msk


def qc_metrics(
    stripped: Subject,
    raw_t1c: nib.Nifti1Image | None,
    final: Subject,
    template: nib.Nifti1Image | None,
    template_mask: nib.Nifti1Image | None,
    thresholds: Mapping[str, float] | None = None,
    tissue: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """QC row of one subject; ``flagged`` with ``reasons``.

    ``stripped``: the skull-strip step (native grid), ``final``: the last step (template space), ``raw_t1c``: the
    T1c before skull stripping (for the SNR), ``template``/``template_mask``: the registration target,
    ``tissue``: its WM/GM/CSF probability maps (:func:`fedglioma.preprocess.qc_measures.tissue_maps`).
    Measures: ``brain_volume_ml`` (native brain mask), ``template_dice`` (template-space brain mask vs the
    template brain mask: partial masks), ``ventricle_contrast`` (template-space T1c: median in the template's
    grey matter minus median in its ventricles, in IQR units: mis-registration), ``template_ncc`` (T1c vs
    template T1 inside the template brain; reported, never flagged), ``snr``, ``tumour_in_brain`` (fraction of
    the tumour inside the native brain mask), ``sequence_contrast`` (lowest tissue-contrast score of the
    modality pairs, ``sequence_pair`` the pair; negative = swapped sequences) with every pair's score in
    ``contrast_scores``. A measure that cannot be computed is None and never flags; an empty brain mask flags.
    """
    th = check_thresholds(thresholds)
    if stripped.brain is None or final.brain is None:
        raise InputError("no brain mask in the skull-strip or final step", site=stripped.state.site,
                         subject=stripped.state.subject, fix="run skull stripping before QC")
    brain = np.asarray(stripped.brain.dataobj) > 0
    fbrain = np.asarray(final.brain.dataobj) > 0
    ftum = None if final.tumour is None else np.asarray(final.tumour.dataobj) > 0
    row: dict[str, Any] = {"site": stripped.state.site, "subject": stripped.state.subject}
    row["brain_volume_ml"] = round(float(brain.sum()) * voxel_volume_ml(stripped.brain), 1)
    row["template_dice"] = row["template_ncc"] = None
    row["ventricle_contrast"] = row["sequence_contrast"] = row["sequence_pair"] = None
    row["contrast_scores"] = {}
    if template is not None and template_mask is not None:
        t_img, t_msk = _on_grid(template, template_mask, final.reference)
        if t_msk.any():
            row["template_dice"] = round(dice(fbrain, t_msk), 4)
            row["template_ncc"] = round(ncc(np.asarray(final.reference.dataobj), t_img, t_msk), 4)
        if tissue is not None and fbrain.any():
            grid = final.reference
            regions = measures.tissue_regions(tissue, t_msk, fbrain, ftum, grid.header.get_zooms()[:3])
            medians = {m: measures.tissue_contrast(np.asarray(final.images[m].dataobj), regions, fbrain) for m in MODALITIES}
            t1c = medians[REFERENCE]
            if t1c is not None:
                row["ventricle_contrast"] = round(t1c["gm"] - t1c["csf"], 3)
            scores = measures.contrast_scores(medians)
            row["contrast_scores"] = {k: round(v, 3) for k, v in scores.items()}
            if scores:
                pair = min(scores, key=scores.__getitem__)
                row["sequence_contrast"], row["sequence_pair"] = round(scores[pair], 3), pair
    row["snr"] = None
    if raw_t1c is not None:
        v = snr(np.asarray(raw_t1c.dataobj), brain)
        row["snr"] = None if v is None else round(v, 2)
    row["tumour_in_brain"] = None
    if stripped.tumour is not None:
        tum = np.asarray(stripped.tumour.dataobj) > 0
        if tum.any():
            row["tumour_in_brain"] = round(float((tum & brain).sum()) / float(tum.sum()), 4)
    reasons = []
    if not brain.any():
        reasons.append("empty brain mask")
    if not th["brain_ml_min"] <= row["brain_volume_ml"] <= th["brain_ml_max"]:
        reasons.append(f"brain volume {row['brain_volume_ml']} mL outside [{th['brain_ml_min']:g}, {th['brain_ml_max']:g}]")
    if row["template_dice"] is not None and row["template_dice"] < th["min_template_dice"]:
        reasons.append(f"template-space brain mask overlaps the template brain by Dice {row['template_dice']} "
                       f"(min {th['min_template_dice']:g}): partial brain mask or registration off")
    if row["ventricle_contrast"] is not None and row["ventricle_contrast"] < th["min_ventricle_contrast"]:
        reasons.append(f"{REFERENCE} grey matter vs ventricles contrast {row['ventricle_contrast']} "
                       f"(min {th['min_ventricle_contrast']:g}): registration to the template off "
                       f"(or the {REFERENCE} is not T1-weighted)")
    if row["tumour_in_brain"] is not None and row["tumour_in_brain"] < th["min_tumour_in_brain"]:
        reasons.append(f"only {100 * row['tumour_in_brain']:.1f}% of the tumour inside the brain mask "
                       f"(min {100 * th['min_tumour_in_brain']:g}%)")
    if row["snr"] is not None and row["snr"] < th["min_snr"]:
        reasons.append(f"SNR {row['snr']} below {th['min_snr']:g}")
    if row["sequence_contrast"] is not None and row["sequence_contrast"] < th["min_sequence_contrast"]:
        a, b = str(row["sequence_pair"]).split(">")
        reasons.append(f"tissue contrast of {a} vs {b} is {row['sequence_contrast']} (min {th['min_sequence_contrast']:g}): "
                       f"{a} and {b} look swapped")
    row["flagged"] = bool(reasons)
    row["reasons"] = reasons
    return row


def check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """The QC thresholds: the defaults (:class:`~fedglioma.settings.QcThresholds`) updated with ``thresholds``;
    an unknown name or a bad value is a ConfigError."""
    return section_params(QcThresholds, thresholds or {}, "qc.thresholds")


def read_qc_step(step_dir: Path, *, site: str, subject: str) -> Subject:
    """A step folder for QC: like :func:`~fedglioma.preprocess.common.read_step` with the brain mask required,
    but an empty brain mask is read (QC flags it) instead of raising."""
    state = read_state(step_dir, site=site, subject=subject)
    images = {m: nib_load_checked(step_dir / image_name(subject, m), site=site, subject=subject) for m in MODALITIES}
    tumour = None
    if state.has_tumour:
        tumour = nib_load_checked(step_dir / tumour_name(subject), site=site, subject=subject, allow_empty=True)
    brain = nib_load_checked(step_dir / brain_name(subject), site=site, subject=subject, allow_empty=True)
    return Subject(images=images, tumour=tumour, brain=brain, state=state)


# --------------------------------------------------------------------------- figure


def qc_figure(sub: Subject, out_png: Path, *, title: str = "") -> None:
    """Tri-planar figure: one row per modality (axial, coronal, sagittal through the tumour
    centroid, or the brain centroid), brain-mask (cyan) and tumour (red) contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = sub.reference
    brain = None if sub.brain is None else np.asarray(sub.brain.dataobj) > 0
    tum = None if sub.tumour is None else np.asarray(sub.tumour.dataobj) > 0
    focus = tum if tum is not None and tum.any() else brain
    centre = (np.array(ndimage.center_of_mass(focus)).round().astype(int) if focus is not None and focus.any()
              else np.array(ref.shape[:3]) // 2)
    zooms = ref.header.get_zooms()[:3]
    fig, axes = plt.subplots(len(MODALITIES), 3, figsize=(9, 12), facecolor="black")

    def cut(a: np.ndarray, ax: int) -> np.ndarray:
        return np.take(a, int(centre[ax]), axis=ax)

    views = [(2, (zooms[1], zooms[0])), (1, (zooms[2], zooms[0])), (0, (zooms[2], zooms[1]))]
    for r, m in enumerate(MODALITIES):
        data = np.asarray(sub.images[m].dataobj, dtype=np.float32)
        vals = data[brain] if brain is not None and brain.any() else data.ravel()
        lo, hi = np.percentile(vals, [1, 99])
        if brain is not None and brain.any():
            data = np.where(brain, data, lo)  # background black whatever its value
        for c, (ax, (sy, sx)) in enumerate(views):
            a = axes[r, c]
            a.imshow(cut(data, ax).T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=sy / sx)
            for msk, col in ((brain, "cyan"), (tum, "red")):
                if msk is not None and cut(msk, ax).any():
                    a.contour(cut(msk, ax).T.astype(float), levels=[0.5], colors=col, linewidths=0.7)
            a.set_axis_off()
            if c == 0:
                a.text(2, 2, m, color="yellow", fontsize=10)
    fig.suptitle(title, color="white")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black", format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- step


def qc(
    subject_dir: Path,
    out_png: Path,
    out_json: Path,
    *,
    thresholds: Mapping[str, float] | None = None,
    site: str | None = None,
    subject: str | None = None,
) -> dict[str, Any]:
    """QC of one subject's preprocessing: write the PNG and the JSON row; returns the row."""
    subject_dir = Path(subject_dir)
    final_dir = find_step_dir(subject_dir, "normalise") or find_step_dir(subject_dir, "n4")
    strip_dir = find_step_dir(subject_dir, "skullstrip")
    if final_dir is None or strip_dir is None:
        raise InputError("preprocessing step folders not found (need skullstrip and normalise)", site=site,
                         subject=subject, file=subject_dir, fix="run the preprocessing steps first")
    state = read_state(final_dir, site=site, subject=subject)
    site, subject = state.site, state.subject
    final = read_qc_step(final_dir, site=site, subject=subject)
    stripped = read_qc_step(strip_dir, site=site, subject=subject)
    coreg_dir = find_step_dir(subject_dir, "coregister")
    raw_t1c = None
    if coreg_dir is not None:
        from fedglioma.io.nifti import load_nifti

        raw_t1c = load_nifti(coreg_dir / f"sub-{subject}_T1c.nii.gz", site=site, subject=subject)
    template = template_mask = tissue = None
    atlas = state.transforms.get("atlas") or {}
    rec = state.step("register_atlas")
    if atlas and rec is not None:
        from fedglioma.preprocess.templates import load_template

        p = rec.get("params", {})
        tpl = load_template(str(atlas["template"]), resolution_mm=float(p.get("resolution_mm", 1.0)),
                            path=p.get("template_path"), mask_path=p.get("template_mask_path"))
        template, template_mask = tpl.image, tpl.mask
        if p.get("template_path") is None:
            tissue = measures.tissue_maps(tpl.name, tpl.image, tpl.mask)
    row = qc_metrics(stripped, raw_t1c, final, template, template_mask, thresholds, tissue)
    row["thresholds"] = check_thresholds(thresholds)
    # steps skipped because of what the site declared (or the config), e.g. "coregister, skullstrip"
    row["skipped"] = ", ".join(str(s["name"]) for s in state.steps if s.get("skipped"))
    qc_figure(final, out_png, title=f"site {site}, subject {subject}" + ("  FLAGGED" if row["flagged"] else ""))
    write_json(out_json, row)
    return row


def write_site_table(rows: Sequence[str | Path], out_tsv: str | Path) -> None:
    """Gather QC JSON rows of one site into a TSV (one line per subject, reasons joined by '; ')."""
    records = []
    for p in rows:
        r = read_json(p, what="QC row")
        records.append({k: ("; ".join(r[k]) if k == "reasons" else r.get(k)) for k in COLUMNS})
    records.sort(key=lambda r: (str(r["site"]), str(r["subject"])))
    with atomic_path(out_tsv) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def flagged_subjects(table: str | Path) -> pd.DataFrame:
    """The rows of a site's QC table (:func:`write_site_table`, read as text) with a boolean ``flagged``."""
    out = read_tsv(table, what="site QC table", text=True)
    out["flagged"] = out["flagged"].str.lower().isin(["true", "1", "yes"])
    return out


def qc_excluded(table: str | Path | None, qc_cfg: Mapping[str, Any]) -> set[str]:
    """Subjects that QC excludes from training and validation (only when ``qc.exclude_flagged``)."""
    if not table or not section(QcConfig, qc_cfg, "qc").exclude_flagged:
        return set()
    t = flagged_subjects(table)
    return set(t.loc[t["flagged"], "subject"])


def qc_site(rows: Sequence[str], table: str, summary: str, example: str, *, site: str,
            qc_cfg: Mapping[str, Any]) -> None:
    """Rule ``qc_site``: the site's QC table, its aggregated summary (no images), and one example overlay.

    Args:
        rows: the site's per-subject QC rows (``qc/sub-{subject}_qc.json``; the figures lie beside them).
        table: QC table to write (TSV, one row per subject).
        summary: aggregated summary to write (JSON: counts, flags, exclusions, median brain volume).
        example: where to copy the QC figure of the first unflagged subject.
        site: site ID.
        qc_cfg: the config's ``qc`` section (``exclude_flagged``).
    """
    write_site_table(rows, table)
    t = flagged_subjects(table)
    flagged = t[t["flagged"]]
    excluded = section(QcConfig, qc_cfg, "qc").exclude_flagged
    flags = [{"subject": r["subject"], "reasons": r.get("reasons", "")} for _, r in flagged.iterrows()]
    write_json(summary, {
        "site": site,
        "n": len(t),
        "n_flagged": len(flagged),
        "exclude_flagged": excluded,
        "exclusions": flags if excluded else [],
        "flags": flags,
        "brain_volume_ml_median": float(np.median(pd.to_numeric(t["brain_volume_ml"]))),
    })
    ok = t[~t["flagged"]]
    pick = (ok if len(ok) else t).iloc[0]
    with atomic_path(example) as tmp:
        shutil.copyfile(Path(rows[0]).parent / f"sub-{pick['subject']}_qc.png", tmp)
