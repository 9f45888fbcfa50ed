"""Step 7 (training file on the network grid) and the inverse mapping back to native space.

The network grid has the direction cosines of the last step's grid (template space),
the configured spacing and shape, and is centred on the brain bounding box. Its
affine and everything needed to map back are written to ``sub-{subject}_grid.json``.

:func:`to_native` maps an array on the network grid to the grid of the original T1c
file in one interpolation: network grid -> (inverse atlas transform) -> RAS T1c grid,
then the reorientation is undone (exact axis permutation/flip).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from fedglioma.atomic import atomic_path, dumps
from fedglioma.constants import MODALITIES
from fedglioma.errors import InputError
from fedglioma.faults import fault_point
from fedglioma.preprocess.common import (
    bbox,
    float_tuple,
    int_tuple,
    read_state,
    read_step,
    timer,
    to_ants,
)
from fedglioma.preprocess.importing import from_canonical
from fedglioma.settings import GridConfig, section

log = logging.getLogger("fedglioma.preprocess.grid")

GRID_VERSION = 1


def grid_name(subject: str) -> str:
    """File name of the grid JSON next to the training file."""
    return f"sub-{subject}_grid.json"


def network_grid(
    source_affine: np.ndarray,
    brain: np.ndarray,
    spacing: tuple[float, float, float],
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Affine of the network grid: source axes, ``spacing`` and ``shape``, centred on the brain bounding box."""
    a = np.asarray(source_affine, dtype=float)
    zooms = np.sqrt((a[:3, :3] ** 2).sum(0))
    rot = a[:3, :3] / zooms
    lo, hi = bbox(np.asarray(brain) > 0)
    centre_vox = (lo + hi - 1) / 2.0
    centre = a[:3, :3] @ centre_vox + a[:3, 3]
    lin = rot * np.asarray(spacing, dtype=float)
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = centre - lin @ ((np.asarray(shape, dtype=float) - 1) / 2.0)
    return out


def resample_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    grid_affine: np.ndarray,
    grid_shape: tuple[int, int, int],
    *,
    is_label: bool,
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``data`` (on ``affine``) onto the grid (``grid_affine``, ``grid_shape``) with
    :func:`nibabel.processing.resample_from_to` (scipy): images trilinear, Gaussian pre-smoothed when
    downsampling (sigma = (factor - 1) / 2 voxels, like skimage); label maps: each label's indicator
    trilinear, the largest wins (background included), so a binary mask is its linear interpolation > 0.5.
    Outside ``data`` the result is 0. No ANTs here: this step would otherwise pay ANTsPy's import (~4 s).
    """
    from nibabel.processing import resample_from_to

    shape = tuple(int(s) for s in grid_shape)
    target = (shape, np.asarray(grid_affine, dtype=float))

    def linear(x: np.ndarray) -> np.ndarray:
        img = nib.Nifti1Image(np.asarray(x, dtype=np.float32), np.asarray(affine, dtype=float))
        return np.asarray(resample_from_to(img, target, order=1, mode="constant", cval=0.0).dataobj, dtype=np.float32)

    if is_label:
        labels = np.asarray(data)
        values = np.unique(labels)
        values = values[values != 0]
        best = 1.0 - linear(labels != 0)  # background weight
        out = np.zeros(shape, dtype=labels.dtype)
        for v in values:
            w = linear(labels == v)
            win = w > best
            out[win], best[win] = v, w[win]
        return out
    x = np.asarray(data, dtype=np.float32)
    if antialias:
        src = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        dst = np.sqrt((np.asarray(grid_affine)[:3, :3] ** 2).sum(0))
        sigma = np.maximum(0.0, (dst / src - 1.0) / 2.0)
        if np.any(sigma > 0):
            x = ndimage.gaussian_filter(x, sigma=sigma).astype(np.float32)
    return linear(x)


def training_file(
    in_dir: Path,
    out_npz: Path,
    *,
    site: str,
    subject: str,
    grid_json: Path | None = None,
    **params: Any,
) -> None:
    """Write ``sub-{subject}_train.npz`` (``image`` float32 (4,X,Y,Z) in MODALITIES order, ``brain`` uint8,
    ``tumour`` uint8 when present) and ``sub-{subject}_grid.json`` next to it (or at ``grid_json``).

    ``params`` are the ``preprocess.grid`` keys (:class:`~fedglioma.settings.GridConfig`: ``grid_spacing``,
    ``grid_shape``, ``antialias``)."""
    in_dir, out_npz = Path(in_dir), Path(out_npz)
    grid = section(GridConfig, params, "preprocess.grid")
    spacing = float_tuple(grid.grid_spacing, "grid_spacing", 3)
    shape = int_tuple(grid.grid_shape, "grid_shape")
    shape = shape * 3 if len(shape) == 1 else shape
    antialias = grid.antialias
    with timer() as t:
        sub = read_step(in_dir, site=site, subject=subject, need_brain=True)
        assert sub.brain is not None
        brain = np.asarray(sub.brain.dataobj) > 0
        if not brain.any():
            raise InputError("the brain mask is empty", site=site, subject=subject, file=in_dir,
                             fix="check the skull-stripping output of this subject")
        src_aff = np.asarray(sub.reference.affine, dtype=float)
        gaff = network_grid(src_aff, brain, spacing, shape)  # type: ignore[arg-type]
        image = np.stack(
            [resample_to_grid(np.asarray(sub.images[m].dataobj), src_aff, gaff, shape, is_label=False,  # type: ignore[arg-type]
                              antialias=antialias) for m in MODALITIES]
        ).astype(np.float32)
        arrays: dict[str, np.ndarray] = {"image": image}
        arrays["brain"] = (resample_to_grid(brain, src_aff, gaff, shape, is_label=True) > 0.5).astype(np.uint8)  # type: ignore[arg-type]
        if sub.tumour is not None:
            arrays["tumour"] = (
                resample_to_grid(np.asarray(sub.tumour.dataobj), src_aff, gaff, shape, is_label=True) > 0.5  # type: ignore[arg-type]
            ).astype(np.uint8)
    src_zooms = np.sqrt((src_aff[:3, :3] ** 2).sum(0))
    lo, hi = bbox(brain)
    extent = (hi - lo) * src_zooms
    src_ml = float(brain.sum() * np.prod(src_zooms)) / 1000
    grid_ml = float(arrays["brain"].sum() * np.prod(spacing)) / 1000
    info: dict[str, Any] = {
        "version": GRID_VERSION,
        "site": site,
        "subject": subject,
        "source_step": in_dir.name,
        "source_affine": src_aff.tolist(),
        "source_shape": list(sub.reference.shape[:3]),
        "grid_affine": gaff.tolist(),
        "grid_shape": list(shape),
        "grid_spacing": list(spacing),
        "brain_bbox_vox": [lo.tolist(), hi.tolist()],
        "brain_extent_mm": extent.round(2).tolist(),
        "brain_fits": bool(np.all(extent <= np.asarray(shape) * np.asarray(spacing))),
        "brain_fraction_kept": round(grid_ml / src_ml, 4) if src_ml > 0 else None,
        "antialias": antialias,
        "interpolation": {"image": "linear", "masks": "linear per label, largest wins"},
        "seconds": round(t["seconds"], 3),
    }
    if not info["brain_fits"]:
        log.warning("site %s, subject %s: brain extent %s mm exceeds the network grid field of view", site, subject,
                    info["brain_extent_mm"])
    json_path = Path(grid_json) if grid_json else out_npz.with_name(grid_name(subject))
    # both files appear together or not at all
    with atomic_path(json_path) as tmp_json:
        with atomic_path(out_npz, suffix=".npz") as tmp_npz, open(tmp_npz, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        tmp_json.write_text(dumps(info) + "\n")
        fault_point(f"preprocess/{site}/{subject}/training-file/between-files")  # the npz renamed, the JSON not


def to_native(
    grid_array: np.ndarray,
    subject_dir: Path,
    grid_json: Path,
    out_path: Path,
    *,
    is_label: bool,
) -> nib.Nifti1Image:
    """Map an array on the network grid back onto the grid of the original T1c file and write it
    (:func:`native_image`, saved atomically)."""
    img = native_image(grid_array, subject_dir, grid_json, is_label=is_label)
    with atomic_path(out_path) as tmp:
        nib.save(img, str(tmp))
    return img


def native_image(
    grid_array: np.ndarray,
    subject_dir: Path,
    grid_json: Path,
    *,
    is_label: bool,
) -> nib.Nifti1Image:
    """Map an array on the network grid back onto the grid of the original T1c file.

    The output has exactly the original T1c file's affine (from state.json), shape and voxel order.
    Labels use genericLabel interpolation and are uint8 (int16 above 255); other arrays (e.g. a probability
    map, to be thresholded on the native grid) linear, float32.
    """
    import ants

    subject_dir, grid_json = Path(subject_dir), Path(grid_json)
    info = json.loads(grid_json.read_text())
    arr = np.asarray(grid_array)
    if arr.shape != tuple(info["grid_shape"]):
        raise ValueError(f"array shape {arr.shape} is not the network grid shape {tuple(info['grid_shape'])}")
    state = read_state(subject_dir / info["source_step"], site=info.get("site"), subject=info.get("subject"))
    canon = state.canonical
    fixed = to_ants(np.zeros(tuple(canon["shape"]), np.float32), np.asarray(canon["affine"]))
    moving = to_ants(arr.astype(np.float32), np.asarray(info["grid_affine"]))
    interp = "genericLabel" if is_label else "linear"
    atlas = state.transforms.get("atlas") or {}
    if atlas and not atlas.get("identity", False):
        files = [str(subject_dir / f) for f in atlas["inverse"]]
        for f in files:
            if not Path(f).is_file():
                raise InputError("transform file missing", site=state.site, subject=state.subject, file=f,
                                 fix="rerun register_atlas for this subject")
        out = ants.apply_transforms(fixed, moving, files, whichtoinvert=list(atlas["whichtoinvert"]), interpolator=interp)
    else:
        out = ants.resample_image_to_target(moving, fixed, interp_type=interp)
    data_c = out.numpy()
    native = state.native["T1c"]
    native_aff = np.asarray(native["affine"], dtype=float)
    data = from_canonical(data_c, native_aff)
    if list(data.shape) != list(native["shape"]):
        raise RuntimeError(f"inverse mapping produced shape {data.shape}, expected {native['shape']}")
    if is_label:
        data = np.rint(data)
        dtype = np.uint8 if data.min() >= 0 and data.max() <= 255 else np.int16
    else:
        dtype = np.float32
    img = nib.Nifti1Image(data.astype(dtype), native_aff)
    img.header.set_sform(native_aff, code=int(native.get("sform_code") or 1))
    img.header.set_qform(native_aff, code=int(native.get("qform_code") or 1))
    img.set_data_dtype(dtype)
    return img


def native_mask(grid_prob: np.ndarray, subject_dir: Path, grid_json: Path, *, threshold: float = 0.5) -> nib.Nifti1Image:
    """The predicted mask on the original T1c grid: the network's probability mapped back (:func:`native_image`,
    linear) and thresholded there (``>= threshold``), uint8. What the external evaluation measures and
    ``fedglioma predict`` writes."""
    prob = native_image(grid_prob, subject_dir, grid_json, is_label=False)
    mask = nib.Nifti1Image((np.asarray(prob.dataobj) >= threshold).astype(np.uint8), prob.affine, prob.header)
    mask.set_data_dtype(np.uint8)
    return mask


def native_reference_mask(subject_dir: Path, *, site: str | None = None, subject: str | None = None) -> np.ndarray | None:
    """The subject's whole-tumour reference mask on the original T1c grid and voxel order (bool), as imported
    from the site's segmentation; ``None`` when the subject has none.

    It is the import step's mask (the site's labels made binary, no resampling), turned back from RAS to the
    original voxel order, so it lies on the same grid as :func:`native_image`.
    """
    from fedglioma.preprocess.qc import find_step_dir

    import_dir = find_step_dir(Path(subject_dir), "import")
    if import_dir is None:
        raise InputError("import step folder not found", site=site, subject=subject, file=subject_dir,
                         fix="rerun the preprocessing of the subject")
    imported = read_step(import_dir, site=site, subject=subject)
    if imported.tumour is None:
        return None
    native_aff = np.asarray(imported.state.native["T1c"]["affine"], dtype=float)
    return from_canonical(np.asarray(imported.tumour.dataobj) > 0, native_aff)
