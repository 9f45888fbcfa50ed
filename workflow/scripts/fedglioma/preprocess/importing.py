"""Step 1, import: checked loading, header checks, whole-tumour mask, reorientation to RAS.

Every failure is an :class:`~fedglioma.errors.InputError` naming site, subject and
file, raised before anything is written (the step folder is written atomically).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from fedglioma.atomic import atomic_dir
from fedglioma.constants import MAX_IMAGE_MB, MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.io.nifti import check_same_grid, load_nifti
from fedglioma.preprocess.common import (
    REFERENCE,
    State,
    Subject,
    grid_of,
    timer,
    write_step,
)
from fedglioma.preprocess.site_checks import check_declared
from fedglioma.settings import ImportParams, parse

log = logging.getLogger("fedglioma.preprocess.import")

_RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]])
#: sform and qform are taken as consistent when they differ by less than this (mm, affine entries).
FORM_ATOL_MM = 1e-2


# --------------------------------------------------------------------------- pure checks


def header_forms(img: nib.Nifti1Image) -> dict[str, Any]:
    """sform/qform codes and whether they agree. nibabel's ``img.affine`` is the sform when its
    code is > 0, else the qform: that choice is kept and reported."""
    hdr = img.header
    s_aff, s_code = hdr.get_sform(coded=True)
    q_aff, q_code = hdr.get_qform(coded=True)
    out: dict[str, Any] = {"sform_code": int(s_code or 0), "qform_code": int(q_code or 0), "warnings": []}
    if s_code and q_code and s_aff is not None and q_aff is not None and not np.allclose(s_aff, q_aff, atol=FORM_ATOL_MM):
        diff = float(np.abs(s_aff - q_aff).max())
        out["warnings"].append(f"sform and qform disagree (max difference {diff:.3g}); the sform is used")
    if not s_code and not q_code:
        out["warnings"].append("neither sform nor qform is set; voxel sizes from pixdim and no orientation are used")
    out["used"] = "sform" if s_code else ("qform" if q_code else "pixdim")
    return out


def fov_box(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """World (RAS mm) extent per axis and centre of the field of view (voxel-edge corners)."""
    shape = np.asarray(img.shape[:3], dtype=float)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) * shape - 0.5
    world = nib.affines.apply_affine(img.affine, corners)
    extent = world.max(0) - world.min(0)
    centre = nib.affines.apply_affine(img.affine, (shape - 1) / 2)
    return extent, centre


def check_fov(
    images: Mapping[str, nib.Nifti1Image],
    *,
    files: Mapping[str, Any] | None = None,
    site: str | None = None,
    subject: str | None = None,
    reference: str = REFERENCE,
    max_extent_diff: float,
    max_centre_mm: float,
) -> None:
    """Fail when a modality's field of view differs wildly from the reference modality's.

    Extents are compared per world axis (relative difference to the larger one, at most ``max_extent_diff``);
    centres by Euclidean distance in mm (at most ``max_centre_mm``).
    """
    ref_ext, ref_c = fov_box(images[reference])
    for m, img in images.items():
        if m == reference:
            continue
        ext, c = fov_box(img)
        rel = np.abs(ext - ref_ext) / np.maximum(np.maximum(ext, ref_ext), 1e-6)
        dist = float(np.linalg.norm(c - ref_c))
        problems = []
        if float(rel.max()) > max_extent_diff:
            problems.append(
                f"field of view {np.round(ext, 1).tolist()} mm differs from the {reference} field of view "
                f"{np.round(ref_ext, 1).tolist()} mm by {100 * float(rel.max()):.0f}% (limit {100 * max_extent_diff:.0f}%)"
            )
        if dist > max_centre_mm:
            problems.append(
                f"field-of-view centre is {dist:.1f} mm away from the {reference} centre (limit {max_centre_mm:g} mm)"
            )
        if problems:
            raise InputError(
                f"{m}: " + "; ".join(problems),
                site=site,
                subject=subject,
                file=(files or {}).get(m),
                fix=f"check that this series belongs to the same session as the {reference} and that its header geometry is right",
            )


def whole_tumour(
    seg: np.ndarray,
    tumour_labels: Sequence[int],
    *,
    non_tumour_labels: Sequence[int] = (),
    site: str | None = None,
    subject: str | None = None,
    file: Any = None,
) -> np.ndarray:
    """Binarise a label map into the whole-tumour mask (uint8).

    Non-integer values and label values that are neither 0, nor in ``tumour_labels``, nor declared
    ``non_tumour_labels`` (e.g. a resection cavity) are an InputError: a label is never silently counted
    or dropped. This is the one check of label values (``fedglioma cohort check-inputs`` calls it too).
    """
    labels = {int(v) for v in tumour_labels}
    other = {int(v) for v in non_tumour_labels}
    if not labels:
        raise ConfigError("tumour_labels is empty")
    if 0 in labels or 0 in other:
        raise ConfigError("tumour_labels and non_tumour_labels must not contain 0 (background)")
    if labels & other:
        raise ConfigError(f"label(s) {sorted(labels & other)} are in both tumour_labels and non_tumour_labels")
    values = np.unique(seg)
    nonint = values[np.abs(values - np.round(values)) > 1e-3]
    if nonint.size:
        raise InputError(
            f"segmentation has non-integer values {np.round(nonint[:5], 4).tolist()}",
            site=site,
            subject=subject,
            file=file,
            fix="give a label map (integer values), not a probability map or a resampled label map",
        )
    ints = {int(round(float(v))) for v in values}
    unknown = sorted(ints - labels - other - {0})
    if unknown:
        raise InputError(
            f"segmentation has label value(s) {unknown} that are not in tumour_labels {sorted(labels)}"
            + (f" nor in non_tumour_labels {sorted(other)}" if other else ""),
            site=site,
            subject=subject,
            file=file,
            fix="add the value(s) to tumour_labels of this site in sites.tsv if they are tumour (to "
                "non_tumour_labels if not, e.g. a resection cavity), or fix the label map",
        )
    return np.isin(np.round(seg).astype(np.int64), sorted(labels)).astype(np.uint8)


def to_canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Reorient to the closest RAS canonical orientation (axis permutation/flip only, no resampling)."""
    return nib.as_closest_canonical(img)


def from_canonical(data: np.ndarray, native_affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_canonical` on an array given the native affine it came from."""
    back = ornt_transform(_RAS_ORNT, io_orientation(np.asarray(native_affine)))
    return np.asarray(apply_orientation(data, back))


# --------------------------------------------------------------------------- step


def import_subject(
    raw: Mapping[str, Path],
    seg: Path | None,
    tumour_labels: Sequence[int],
    out_dir: Path,
    *,
    site: str,
    subject: str,
    non_tumour_labels: Sequence[int] = (),
    declared: Declared | None = None,
    max_image_mb: float = MAX_IMAGE_MB,
    **params: Any,
) -> None:
    """Import one subject: checked loading, FOV and label checks, reorientation to RAS canonical.

    What the site ``declared`` (skull-stripped, template space) is checked against the images here,
    before any long job runs (:func:`fedglioma.preprocess.site_checks.check_declared`).

    Args:
        raw: path per modality (keys T1, T1c, T2, FLAIR).
        seg: label map on the T1c grid, or None.
        tumour_labels: label values forming the whole tumour.
        out_dir: step folder to write (atomically).
        max_image_mb: largest image loaded (config ``inputs.max_image_mb``), checked from the header.
        params: :class:`~fedglioma.settings.ImportParams` (``fov_max_extent_diff``, ``fov_max_centre_mm``).
    """
    fov = parse(ImportParams, params, what="import parameters")
    missing = [m for m in MODALITIES if m not in raw]
    if missing:
        raise InputError(f"modalities {missing} missing", site=site, subject=subject,
                         fix="check the site layout in sites.tsv")
    with timer() as t:
        ctx = {"site": site, "subject": subject}
        state = State(site=site, subject=subject)
        warnings: list[str] = []
        native_imgs: dict[str, nib.Nifti1Image] = {}
        native: dict[str, Any] = {"reference": REFERENCE, "files": {}}
        for m in MODALITIES:
            path = Path(raw[m])
            img = load_nifti(path, max_mb=max_image_mb, **ctx)
            forms = header_forms(img)
            for w in forms.pop("warnings"):
                msg = f"{m} ({path.name}): {w}"
                log.warning("site %s, subject %s: %s", site, subject, msg)
                warnings.append(msg)
            native_imgs[m] = img
            native["files"][m] = str(path)
            native[m] = {**grid_of(img), **forms}
        check_fov(
            native_imgs,
            files={m: raw[m] for m in MODALITIES},
            max_extent_diff=fov.fov_max_extent_diff,
            max_centre_mm=fov.fov_max_centre_mm,
            **ctx,
        )
        declared_notes = check_declared(native_imgs, declared or Declared(), site=site, subject=subject,
                                        files={m: str(raw[m]) for m in MODALITIES}, reference=REFERENCE)
        tumour = None
        if seg is not None:
            seg_img = load_nifti(seg, allow_empty=True, max_mb=max_image_mb, **ctx)
            check_same_grid(native_imgs[REFERENCE], seg_img, file=seg, what="segmentation", **ctx)
            wt = whole_tumour(np.asarray(seg_img.dataobj), tumour_labels, non_tumour_labels=non_tumour_labels,
                              file=seg, **ctx)
            if not wt.any():
                msg = f"segmentation {Path(seg).name} has no tumour voxel (labels {list(tumour_labels)})"
                log.warning("site %s, subject %s: %s", site, subject, msg)
                warnings.append(msg)
            tumour = to_canonical(nib.Nifti1Image(wt, seg_img.affine, seg_img.header))
            native["files"]["seg"] = str(seg)
            native["tumour_labels"] = [int(v) for v in tumour_labels]
            native["non_tumour_labels"] = [int(v) for v in non_tumour_labels]
        images = {m: to_canonical(img) for m, img in native_imgs.items()}
        state.native = native
        state.canonical = grid_of(images[REFERENCE])
    state.add_step(
        "import",
        params={k: params[k] for k in sorted(params)},
        seconds=t["seconds"],
        warnings=warnings,
        declared=(declared or Declared()).as_dict(),
        declared_checks=declared_notes,
    )
    with atomic_dir(out_dir) as tmp:
        write_step(tmp, Subject(images=images, tumour=tumour, brain=None, state=state), subject=subject)
