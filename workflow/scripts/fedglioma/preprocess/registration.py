"""Thin, tuned wrappers around ``ants.registration``.

ANTs writes its transform files next to ``outprefix``; without one it uses the
system temp folder and leaves them there. Here every registration writes into
a private folder inside the job's (temporary, atomic) step folder, the files
that are kept are moved to their final names and the folder is removed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedglioma.errors import ConfigError

if TYPE_CHECKING:
    import ants

#: Tuned multi-resolution schedule for linear registration of images resampled to a 2 mm
#: working grid (see docs/preprocessing.md).
FAST_LINEAR: dict[str, Any] = {
    "aff_shrink_factors": (4, 2, 1),
    "aff_smoothing_sigmas": (2, 1, 0),
    "aff_iterations": (100, 50, 25),
    "aff_sampling": 32,
    "aff_random_sampling_rate": 0.2,
}
LINEAR = {"Rigid", "QuickRigid", "DenseRigid", "Affine", "AffineFast", "Similarity", "Translation"}
DEFORMABLE_PREFIXES = ("SyN", "antsRegistrationSyN", "ElasticSyN", "SyNOnly", "SyNRA")


@dataclass
class Registration:
    """Result of one registration: transform files and how to apply them.

    ``forward`` maps moving -> fixed (use with ``ants.apply_transforms(fixed, moving, forward)``);
    ``inverse`` with ``inverse_invert`` maps fixed -> moving.
    """

    forward: list[Path]
    inverse: list[Path]
    inverse_invert: list[bool]
    warped: ants.ANTsImage | None = None
    params: dict[str, Any] = field(default_factory=dict)


def schedule(params: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the ``ants.registration`` keyword arguments of the multi-resolution schedule.

    Parameter names: ``shrink``, ``smoothing``, ``iterations`` (one entry per level),
    ``sampling`` (histogram bins), ``sampling_rate`` (random sampling fraction),
    ``syn_iterations`` (deformable stage), ``seed``.
    """
    d = dict(FAST_LINEAR if defaults is None else defaults)
    kw: dict[str, Any] = {
        "aff_shrink_factors": tuple(int(v) for v in params.get("shrink", d["aff_shrink_factors"])),
        "aff_smoothing_sigmas": tuple(float(v) for v in params.get("smoothing", d["aff_smoothing_sigmas"])),
        "aff_iterations": tuple(int(v) for v in params.get("iterations", d["aff_iterations"])),
        "aff_sampling": int(params.get("sampling", d["aff_sampling"])),
        "aff_random_sampling_rate": float(params.get("sampling_rate", d["aff_random_sampling_rate"])),
    }
    n = {len(kw["aff_shrink_factors"]), len(kw["aff_smoothing_sigmas"]), len(kw["aff_iterations"])}
    if len(n) != 1:
        raise ConfigError(
            f"registration schedule: shrink {kw['aff_shrink_factors']}, smoothing {kw['aff_smoothing_sigmas']} "
            f"and iterations {kw['aff_iterations']} must have the same length"
        )
    # ANTsPy formats the sigmas with str(); ints keep its command line short and exact
    kw["aff_smoothing_sigmas"] = tuple(int(s) if float(s).is_integer() else s for s in kw["aff_smoothing_sigmas"])
    if "syn_iterations" in params:
        kw["reg_iterations"] = tuple(int(v) for v in params["syn_iterations"])
    return kw


def check_transform(type_of_transform: str) -> None:
    """ConfigError for a transform name ANTsPy does not know."""
    known = LINEAR | {"SyN", "SyNRA", "SyNOnly", "ElasticSyN", "SyNAggro", "SyNCC", "TRSAA"}
    if not (type_of_transform in known or type_of_transform.startswith("antsRegistrationSyN")):
        raise ConfigError(f"unsupported type_of_transform {type_of_transform!r}")


def register(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    *,
    workdir: Path,
    dest: Path,
    stem: str,
    type_of_transform: str,
    kwargs: dict[str, Any],
    seed: int | None = 1,
    keep: bool = True,
    working_resolution_mm: float | None = None,
    fixed_mask: ants.ANTsImage | None = None,
) -> Registration:
    """Register ``moving`` onto ``fixed``; keep the transform files as ``dest/stem*``.

    With ``working_resolution_mm`` images finer than that are first resampled (linear) to it
    (never upsampled): ANTs smooths and shrinks the full-resolution images at every pyramid level, so
    registering 1 mm images on a 2 mm grid is several times faster for the same transform
    (transforms are in physical space and apply to the full-resolution images unchanged).
    ``fixed_mask`` restricts the metric to the mask (e.g. the template brain).
    ANTs temporaries go to a private folder under ``workdir`` that is removed afterwards.
    With ``keep=False`` the transforms are not kept (paths point nowhere; use ``warped``).
    """
    import ants

    if working_resolution_mm:
        fixed = _coarsen(fixed, float(working_resolution_mm))
        moving = _coarsen(moving, float(working_resolution_mm))
        if fixed_mask is not None and tuple(fixed_mask.shape) != tuple(fixed.shape):
            fixed_mask = ants.resample_image_to_target(fixed_mask, fixed, interp_type="nearestNeighbor")
    if fixed_mask is not None:
        kwargs = {**kwargs, "mask": fixed_mask}
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ants-", dir=workdir))
    try:
        res = ants.registration(
            fixed,
            moving,
            type_of_transform=type_of_transform,
            outprefix=str(tmp / "r_"),
            random_seed=seed,
            **kwargs,
        )
        fwd = [Path(p) for p in _as_list(res["fwdtransforms"])]
        inv = [Path(p) for p in _as_list(res["invtransforms"])]
        renamed: dict[Path, Path] = {}
        if keep:
            dest.mkdir(parents=True, exist_ok=True)
            for p in {*fwd, *inv}:
                target = dest / (stem + p.name[len("r_"):])
                shutil.move(str(p), target)
                renamed[p] = target
        fwd = [renamed.get(p, p) for p in fwd]
        inv = [renamed.get(p, p) for p in inv]
        invert = [p.name.endswith("GenericAffine.mat") for p in inv]
        return Registration(
            forward=fwd,
            inverse=inv,
            inverse_invert=invert,
            warped=res["warpedmovout"],
            params={
                "type_of_transform": type_of_transform,
                "working_resolution_mm": working_resolution_mm,
                "fixed_mask": fixed_mask is not None,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k != "mask"},
            },
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _coarsen(img: ants.ANTsImage, res: float) -> ants.ANTsImage:
    """Resample (linear) to spacing ``max(spacing, res)`` per axis; never upsample."""
    import ants

    spacing = tuple(max(float(s), res) for s in img.spacing)
    if np.allclose(spacing, img.spacing, atol=1e-3):
        return img
    return ants.resample_image(img, spacing, use_voxels=False, interp_type=0)


def _as_list(x: Any) -> list[str]:
    if not x:
        return []
    return [x] if isinstance(x, str) else list(x)
