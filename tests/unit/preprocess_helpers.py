"""Synthetic heads for the preprocessing tests, built from nilearn's bundled MNI152 tissue maps.

Tissue classes (WM, GM, CSF from the template; a skull and a scalp shell around the
brain; a three-label tumour in the right hemisphere) get a per-modality intensity,
plus a smooth bias field and noise. Everything is in memory; ``write_raw`` writes
NIfTI files the way a site would deliver them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

MODS = ("T1", "T1c", "T2", "FLAIR")
#: intensity per class: wm, gm, csf, skull, scalp, necrosis (1), oedema (2), enhancing (4)
CONTRAST = {
    "T1": (0.85, 0.60, 0.25, 0.12, 0.90, 0.30, 0.50, 0.55),
    "T1c": (0.85, 0.60, 0.25, 0.12, 0.90, 0.30, 0.50, 1.00),
    "T2": (0.40, 0.55, 1.00, 0.08, 0.60, 0.95, 0.85, 0.70),
    "FLAIR": (0.45, 0.60, 0.10, 0.08, 0.60, 0.40, 0.95, 0.70),
}


@dataclass
class Phantom:
    """Synthetic subject on one grid (RAS affine)."""

    images: dict[str, np.ndarray]
    affine: np.ndarray
    brain: np.ndarray
    seg: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def img(self, mod: str) -> nib.Nifti1Image:
        return nib.Nifti1Image(self.images[mod].astype(np.float32), self.affine)


@functools.lru_cache(maxsize=4)
def _tissue(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template

    gm = load_mni152_gm_template(resolution=resolution)
    wm = load_mni152_wm_template(resolution=resolution).get_fdata(dtype=np.float32)
    mask = load_mni152_brain_mask(resolution=resolution).get_fdata(dtype=np.float32) > 0.5
    g = gm.get_fdata(dtype=np.float32)
    return g, wm, mask, gm.affine.copy(), np.asarray(gm.header.get_zooms()[:3], dtype=float)


def make_phantom(
    resolution: int = 3,
    *,
    pad_mm: float = 24.0,
    seed: int = 0,
    skull: bool = True,
    tumour: bool = True,
    noise: float = 0.02,
    bias: float = 0.15,
) -> Phantom:
    """A head (or, with ``skull=False``, a brain-extracted image with 0 background) on an MNI-aligned grid."""
    rng = np.random.default_rng(seed)
    g, w, mask, aff, zooms = _tissue(resolution)
    pad = int(round(pad_mm / zooms[0]))
    g, w, mask = (np.pad(a, pad) for a in (g, w, mask))
    aff = aff.copy()
    aff[:3, 3] -= aff[:3, :3] @ np.full(3, pad)
    g = np.where(mask, g, 0)
    w = np.where(mask, w, 0)
    csf = np.where(mask, np.clip(1 - g - w, 0, 1), 0)
    dist = ndimage.distance_transform_edt(~mask, sampling=zooms)
    csf = csf + ((dist > 0) & (dist <= 3)).astype(np.float32)
    skull_m = ((dist > 3) & (dist <= 9)).astype(np.float32) if skull else 0 * csf
    scalp_m = ((dist > 9) & (dist <= 14)).astype(np.float32) if skull else 0 * csf
    seg = np.zeros(mask.shape, np.uint8)
    if tumour:
        ijk = np.indices(mask.shape).reshape(3, -1).T
        xyz = nib.affines.apply_affine(aff, ijk).reshape((*mask.shape, 3))
        r = np.linalg.norm(xyz - np.array([32.0, -12.0, 18.0]), axis=-1)
        seg[(r <= 20) & mask] = 2
        seg[(r <= 12) & mask] = 4
        seg[(r <= 7) & mask] = 1
    x = np.linspace(-1, 1, mask.shape[0])[:, None, None]
    y = np.linspace(-1, 1, mask.shape[1])[None, :, None]
    z = np.linspace(-1, 1, mask.shape[2])[None, None, :]
    images = {}
    for m in MODS:
        c = CONTRAST[m]
        img = c[0] * w + c[1] * g + c[2] * csf + c[3] * skull_m + c[4] * scalp_m
        for lab, v in ((1, c[5]), (2, c[6]), (4, c[7])):
            img = np.where(seg == lab, v, img)
        if not skull:
            img = np.where(mask, img, 0)
        field_ = 1 + bias * (0.6 * x + 0.3 * y - 0.4 * z + 0.3 * x * y)
        img = img * field_ * 1000.0
        if noise:
            img = np.abs(img + rng.normal(0, noise * 1000.0, img.shape))
            if not skull:
                img = np.where(mask, img, 0)
        images[m] = img.astype(np.float32)
    return Phantom(images=images, affine=aff, brain=mask.astype(np.uint8), seg=seg)


def random_rigid(rng: np.random.Generator, max_deg: float = 8.0, max_mm: float = 8.0) -> np.ndarray:
    """Random rigid 4x4 world transform (RAS)."""
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ ry @ rx
    out[:3, 3] = rng.uniform(-max_mm, max_mm, 3)
    return out


def move_data(data: np.ndarray, affine: np.ndarray, world: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample ``data`` so that the content moves by ``world`` (RAS 4x4): out(x) = data(world^-1 x)."""
    vox2vox = np.linalg.inv(affine) @ np.linalg.inv(world) @ affine
    return ndimage.affine_transform(data, vox2vox[:3, :3], vox2vox[:3, 3], order=order, mode="constant", cval=0.0)


def reorient_affine(data: np.ndarray, affine: np.ndarray, codes: str = "LPI") -> tuple[np.ndarray, np.ndarray]:
    """Same content stored in another voxel order (e.g. LPI): returns (data, affine)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    cur = nib.orientations.io_orientation(affine)
    new = axcodes2ornt(tuple(codes))
    t = ornt_transform(cur, new)
    out = apply_orientation(data, t)
    return out, affine @ inv_ornt_aff(t, data.shape)


def write_raw(
    root: Path,
    ph: Phantom,
    *,
    affines: dict[str, np.ndarray] | None = None,
    data: dict[str, np.ndarray] | None = None,
    seg: bool = True,
    seg_affine: np.ndarray | None = None,
) -> tuple[dict[str, Path], Path | None]:
    """Write the phantom as a site would: one NIfTI per modality (+ seg); returns (paths, seg path)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for m in MODS:
        arr = (data or {}).get(m, ph.images[m])
        a = (affines or {}).get(m, ph.affine)
        p = root / f"raw_{m}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.float32), a), p)
        paths[m] = p
    sp = None
    if seg:
        sp = root / "raw_seg.nii.gz"
        s = (data or {}).get("seg", ph.seg)
        nib.save(
            nib.Nifti1Image(
                s.astype(np.uint8), (affines or {}).get("seg", seg_affine if seg_affine is not None else ph.affine)
            ),
            sp,
        )
    return paths, sp


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def hdbet_head() -> tuple[np.ndarray, list[float]]:
    """A synthetic 2 mm head with skull in HD-BET's (z, y, x) order, and its spacing: the HD-BET tests' input."""
    from fedglioma.synth import SiteSpec, synthesize_subject

    spec = SiteSpec(name="HDBET", voxel_size=(2.0, 2.0, 2.0), fov_mm=(200.0, 220.0, 180.0))
    s = synthesize_subject(spec, 1, seed=5)
    return np.ascontiguousarray(s.images["T1c"].astype(np.float32).transpose(2, 1, 0)), [2.0, 2.0, 2.0]


@functools.cache
def hdbet_fp32_mask() -> np.ndarray:
    """fedglioma's HD-BET mask of :func:`hdbet_head` in fp32, computed once per session (the reference of the
    runner and runtime tests; read-only). One torch thread: the flush of denormals that ``predict`` sets is per
    thread, and this process's torch worker threads exist already (without it the fp32 pass takes minutes on Intel
    cores)."""
    import torch

    from fedglioma.preprocess import hdbet

    data, spacing = hdbet_head()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mask = hdbet.predict(data, spacing, device="cpu", precision="fp32")
    finally:
        torch.set_num_threads(threads)
    mask.setflags(write=False)
    return mask
