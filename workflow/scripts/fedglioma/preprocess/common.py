"""Shared helpers of the preprocessing steps: file names, step folders, state.json, nibabel <-> ANTs.

A step folder holds ``sub-{subject}_{T1,T1c,T2,FLAIR}.nii.gz``, optionally
``sub-{subject}_desc-tumour_mask.nii.gz`` and ``sub-{subject}_desc-brain_mask.nii.gz``,
and ``state.json`` (accumulated provenance, see :class:`State`).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from fedglioma import __version__
from fedglioma.atomic import write_json
from fedglioma.constants import MODALITIES
from fedglioma.errors import ConfigError, InputError

if TYPE_CHECKING:
    import ants

log = logging.getLogger("fedglioma.preprocess")

STATE_NAME = "state.json"
STATE_VERSION = 1
#: Reference modality: every subject grid is the T1c grid.
REFERENCE = "T1c"
#: nibabel -> ITK/ANTs physical space (RAS <-> LPS).
_LPS = np.diag([-1.0, -1.0, 1.0])


def image_name(subject: str, modality: str) -> str:
    """File name of one modality in a step folder."""
    return f"sub-{subject}_{modality}.nii.gz"


def tumour_name(subject: str) -> str:
    """File name of the binary whole-tumour mask."""
    return f"sub-{subject}_desc-tumour_mask.nii.gz"


def brain_name(subject: str) -> str:
    """File name of the binary brain mask."""
    return f"sub-{subject}_desc-brain_mask.nii.gz"


# --------------------------------------------------------------------------- state


@dataclass
class State:
    """Content of ``state.json``: accumulated provenance of one subject.

    ``native`` describes the original input files (affine, shape, orientation,
    header codes) so outputs can be mapped back; ``canonical`` is the RAS grid
    of the T1c that every step up to skull stripping uses; ``transforms`` holds
    transform files (paths relative to the subject folder) per step; ``steps``
    lists what was done or skipped, with parameters and timings.
    """

    site: str
    subject: str
    native: dict[str, Any] = field(default_factory=dict)
    canonical: dict[str, Any] = field(default_factory=dict)
    transforms: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    has_tumour: bool = False
    has_brain: bool = False
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fedglioma_version": __version__,
            "site": self.site,
            "subject": self.subject,
            "native": self.native,
            "canonical": self.canonical,
            "transforms": self.transforms,
            "steps": self.steps,
            "has_tumour": self.has_tumour,
            "has_brain": self.has_brain,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> State:
        return cls(
            site=obj["site"],
            subject=obj["subject"],
            native=dict(obj.get("native", {})),
            canonical=dict(obj.get("canonical", {})),
            transforms=dict(obj.get("transforms", {})),
            steps=list(obj.get("steps", [])),
            has_tumour=bool(obj.get("has_tumour", False)),
            has_brain=bool(obj.get("has_brain", False)),
            version=int(obj.get("version", STATE_VERSION)),
        )

    def copy(self) -> State:
        return State.from_json(copy.deepcopy(self.to_json()))

    def step(self, name: str) -> dict[str, Any] | None:
        """Last record of step ``name`` (None if never run)."""
        for rec in reversed(self.steps):
            if rec.get("name") == name:
                return rec
        return None

    def add_step(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        skipped: bool = False,
        reason: str | None = None,
        seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        rec: dict[str, Any] = {"name": name, "skipped": skipped, "params": dict(params or {})}
        if reason:
            rec["reason"] = reason
        if seconds is not None:
            rec["seconds"] = round(float(seconds), 3)
        rec.update(extra)
        self.steps.append(rec)
        return rec


def read_state(step_dir: Path, *, site: str | None = None, subject: str | None = None) -> State:
    """Read ``state.json`` of a step folder and check it belongs to ``site``/``subject``."""
    path = Path(step_dir) / STATE_NAME
    if not path.is_file():
        raise InputError(
            "state.json missing from the previous step folder",
            site=site,
            subject=subject,
            file=path,
            fix="rerun the previous preprocessing step",
        )
    try:
        state = State.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"state.json is unreadable ({exc})", site=site, subject=subject, file=path,
                         fix="rerun the previous preprocessing step") from exc
    if (site is not None and state.site != site) or (subject is not None and state.subject != subject):
        raise InputError(
            f"state.json belongs to site {state.site}, subject {state.subject}",
            site=site,
            subject=subject,
            file=path,
            fix="check the step folder paths given to this step",
        )
    return state


def write_state(step_dir: Path, state: State) -> None:
    """Write ``state.json`` into a (temporary) step folder."""
    write_json(Path(step_dir) / STATE_NAME, state.to_json())


def subject_dir_of(step_dir: Path) -> Path:
    """The subject folder is the parent of the step folders."""
    return Path(step_dir).parent


def rel_to_subject(final_step_dir: Path, *parts: str) -> str:
    """Path of a file inside ``final_step_dir`` relative to the subject folder (POSIX)."""
    return "/".join((Path(final_step_dir).name, *parts))


# --------------------------------------------------------------------------- step folders


@dataclass
class Subject:
    """The images of one subject in one step folder (all on one grid unless stated)."""

    images: dict[str, nib.Nifti1Image]
    tumour: nib.Nifti1Image | None
    brain: nib.Nifti1Image | None
    state: State

    @property
    def reference(self) -> nib.Nifti1Image:
        return self.images[REFERENCE]


def read_step(step_dir: Path, *, site: str, subject: str, need_brain: bool = False) -> Subject:
    """Load every image of a step folder (checked) together with its state."""
    step_dir = Path(step_dir)
    state = read_state(step_dir, site=site, subject=subject)
    images = {m: nib_load_checked(step_dir / image_name(subject, m), site=site, subject=subject) for m in MODALITIES}
    tumour = None
    if state.has_tumour:
        tumour = nib_load_checked(step_dir / tumour_name(subject), site=site, subject=subject, allow_empty=True)
    brain = None
    if state.has_brain or need_brain:
        brain = nib_load_checked(step_dir / brain_name(subject), site=site, subject=subject)
    return Subject(images=images, tumour=tumour, brain=brain, state=state)


def nib_load_checked(path: Path, *, site: str | None, subject: str | None, allow_empty: bool = False) -> nib.Nifti1Image:
    """``fedglioma.io.nifti.load_nifti`` (imported lazily to keep import light)."""
    from fedglioma.io.nifti import load_nifti

    return load_nifti(path, site=site, subject=subject, allow_empty=allow_empty)


def write_step(out_tmp: Path, sub: Subject, *, subject: str) -> None:
    """Write images, masks and state of ``sub`` into a (temporary) step folder."""
    for m in MODALITIES:
        save_image(sub.images[m], out_tmp / image_name(subject, m))
    if sub.tumour is not None:
        save_mask(sub.tumour, out_tmp / tumour_name(subject))
    if sub.brain is not None:
        save_mask(sub.brain, out_tmp / brain_name(subject))
    sub.state.has_tumour = sub.tumour is not None
    sub.state.has_brain = sub.brain is not None
    write_state(out_tmp, sub.state)


def save_image(img: nib.Nifti1Image, path: Path) -> None:
    """Save a float32 image (header geometry kept)."""
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header)
    out.set_data_dtype(np.float32)
    out.header["scl_slope"] = np.nan
    out.header["scl_inter"] = np.nan
    nib.save(out, str(path))


def save_mask(img: nib.Nifti1Image, path: Path) -> None:
    """Save a binary mask as uint8 (header geometry kept)."""
    data = (np.asarray(img.dataobj) > 0.5).astype(np.uint8)
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.uint8)
    out.header["scl_slope"] = np.nan
    out.header["scl_inter"] = np.nan
    nib.save(out, str(path))


def like(img: nib.Nifti1Image, data: np.ndarray) -> nib.Nifti1Image:
    """A new image with ``data`` on the grid (affine and header) of ``img``."""
    out = nib.Nifti1Image(np.asarray(data), img.affine, img.header)
    out.set_data_dtype(np.asarray(data).dtype)
    return out


def copy_step(in_dir: Path, out_tmp: Path) -> None:
    """Copy every file of a step folder (identical data) except state.json."""
    for p in Path(in_dir).iterdir():
        if p.is_file() and p.name != STATE_NAME and not p.name.startswith("."):
            shutil.copy2(p, out_tmp / p.name)


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """Measure wall-clock seconds of a block: ``with timer() as t: ...; t["seconds"]``."""
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - t0


# --------------------------------------------------------------------------- geometry


def grid_of(img: nib.Nifti1Image) -> dict[str, Any]:
    """Geometry record of an image: affine, shape, voxel sizes, axis codes."""
    return {
        "affine": np.asarray(img.affine, dtype=float).tolist(),
        "shape": [int(s) for s in img.shape[:3]],
        "zooms": [float(z) for z in img.header.get_zooms()[:3]],
        "axcodes": "".join(nib.aff2axcodes(img.affine)),
    }


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, atol: float = 1e-3) -> bool:
    """True when both images have the same shape and affine."""
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=atol)


def voxel_volume_ml(img: nib.Nifti1Image) -> float:
    """Volume of one voxel in mL."""
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-exclusive voxel bounding box (lo, hi) of a non-empty mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("empty mask has no bounding box")
    return idx.min(0), idx.max(0) + 1


# --------------------------------------------------------------------------- ANTs


def to_ants(img: nib.Nifti1Image | np.ndarray, affine: np.ndarray | None = None) -> ants.ANTsImage:
    """nibabel image (or array + RAS affine) -> ANTs image in LPS physical space.

    Voxel order is kept; only the world convention changes (RAS -> LPS).
    """
    import ants

    if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=float)
    else:
        data = np.asarray(img, dtype=np.float32)
        if affine is None:
            raise ValueError("an array needs an affine")
        affine = np.asarray(affine, dtype=float)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    direction = _LPS @ affine[:3, :3] / spacing
    origin = _LPS @ affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data),
        origin=origin.tolist(),
        spacing=spacing.tolist(),
        direction=direction,
    )


def ants_affine(aimg: ants.ANTsImage) -> np.ndarray:
    """RAS voxel-to-world affine of an ANTs image."""
    spacing = np.asarray(aimg.spacing, dtype=float)
    direction = np.asarray(aimg.direction, dtype=float)
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ direction * spacing
    aff[:3, 3] = _LPS @ np.asarray(aimg.origin, dtype=float)
    return aff


def from_ants(aimg: ants.ANTsImage, like_img: nib.Nifti1Image | None = None, dtype: Any = np.float32) -> nib.Nifti1Image:
    """ANTs image -> nibabel image. With ``like_img`` the header and affine are copied exactly
    (the grids must match; ANTs round-trips geometry in float64 but NIfTI headers are float32)."""
    data = aimg.numpy().astype(dtype, copy=False)
    if like_img is not None:
        if tuple(like_img.shape[:3]) != data.shape:
            raise ValueError(f"shape {data.shape} differs from reference {like_img.shape[:3]}")
        out = nib.Nifti1Image(data, like_img.affine, like_img.header)
    else:
        out = nib.Nifti1Image(data, ants_affine(aimg))
    out.set_data_dtype(dtype)
    return out


def params_get(params: Mapping[str, Any], key: str, default: Any, types: type | tuple[type, ...] | None = None) -> Any:
    """Read one parameter, check its type, raise ConfigError on mismatch."""
    value = params.get(key, default)
    if types is not None and value is not None and not isinstance(value, types):
        raise ConfigError(f"preprocess parameter {key!r} = {value!r} has the wrong type (expected {types})")
    return value


def int_tuple(value: Any, key: str) -> tuple[int, ...]:
    """Parameter given as int or list of ints -> tuple of ints."""
    try:
        vals = (int(value),) if np.isscalar(value) else tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"preprocess parameter {key!r} = {value!r} must be integers") from exc
    return vals


def float_tuple(value: Any, key: str, n: int | None = None) -> tuple[float, ...]:
    """Parameter given as number or list of numbers -> tuple of floats (broadcast to ``n``)."""
    try:
        vals = (float(value),) if np.isscalar(value) else tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"preprocess parameter {key!r} = {value!r} must be numbers") from exc
    if n is not None:
        if len(vals) == 1:
            vals = vals * n
        if len(vals) != n:
            raise ConfigError(f"preprocess parameter {key!r} = {value!r} must have {n} values")
    return vals
