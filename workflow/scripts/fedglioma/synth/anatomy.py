"""Template-space head model of the synthetic cohort.

The brain comes from nilearn's bundled MNI152 2009 template (1 mm; T1 template,
grey- and white-matter probability maps and brain mask, no download). Around it
this module builds what a non-skull-stripped scanner image also shows: outer
CSF and dura, a skull with inner and outer cortical tables and a marrow
(diploe) layer, scalp (galea and temporal muscles, subcutaneous fat, skin), a
neck with spinal cord, canal and vertebral bodies, and a face block with orbits
(eyeballs in orbital fat), a mandible-like arc and air sinuses.

Everything is computed once per process on a padded 1 mm template grid
(``HeadModel.shape`` = (197, 255, 233), RAS voxel order) and cached; a subject
is then one resampling of these maps onto its native scanner grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Tissue classes of the head model.
TISSUES: tuple[str, ...] = ("wm", "gm", "csf", "bone", "marrow", "fat", "muscle", "skin", "vitreous")

#: Relative signal of each tissue class in (T1, T1c, T2, FLAIR), white matter T1 = 1.
#: T1: WM > GM > CSF, fat and fatty marrow bright, cortical bone dark. T2: CSF and vitreous bright,
#: WM < GM. FLAIR: like T2 with free fluid (CSF, vitreous) suppressed. T1c: T1 plus mild enhancement
#: of vascular soft tissue (muscle, skin).
TISSUE_INTENSITY: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 0.45, 0.50),
    "gm": (0.66, 0.69, 0.64, 0.70),
    "csf": (0.16, 0.18, 1.00, 0.07),
    "bone": (0.04, 0.04, 0.04, 0.04),
    "marrow": (0.82, 0.84, 0.45, 0.52),
    "fat": (1.12, 1.12, 0.82, 0.78),
    "muscle": (0.48, 0.56, 0.30, 0.36),
    "skin": (0.68, 0.76, 0.52, 0.55),
    "vitreous": (0.14, 0.16, 1.00, 0.07),
}

#: Padding (voxels = mm) added to the MNI box: ((x-, x+), (y-, y+), (z-, z+)); room for face and neck.
_PAD: tuple[tuple[int, int], ...] = ((0, 0), (0, 22), (44, 0))
#: Anatomy seed: one fixed head; subjects differ by pose, head size, tumour and scanner.
_ANATOMY_SEED = 20250101
#: z-slab thickness (voxels) of the assembly loop: bounds the memory of temporaries.
_SLAB = 24


@dataclass(frozen=True)
class HeadModel:
    """Healthy head in padded MNI152 space (1 mm, RAS voxel order).

    Attributes:
        affine: (4, 4) voxel -> template mm of the 1 mm maps.
        intensity: (4, X, Y, Z) float32 healthy signal of T1, T1c, T2, FLAIR (WM T1 = 1).
        brain: (X, Y, Z) uint8, 255 inside the ground-truth brain mask (MNI152 brain mask, includes
            ventricles and sulcal CSF), else 0.
        parenchyma: (X, Y, Z) uint8, 255 * (WM + 0.35 GM): where edema spreads.
        coarse_affine: (4, 4) voxel -> template mm of the 2 mm ``depth`` map.
        depth: (X2, Y2, Z2) float32 distance (mm) below the brain-mask surface, 0 outside; 2 mm grid.
        occupancy: (X2, Y2, Z2) uint8, 1 within 4 mm of the head (all non-air voxels inside); 2 mm grid.
        candidates: (N, 3) float32 template-mm positions where a tumour centre may lie.
        candidate_depth: (N,) float32 depth (mm) of each candidate below the brain surface.
        head_centre: (3,) template-mm centre of the head (rotation centre of the pose).
    """

    affine: np.ndarray
    intensity: np.ndarray
    brain: np.ndarray
    parenchyma: np.ndarray
    coarse_affine: np.ndarray
    depth: np.ndarray
    occupancy: np.ndarray
    candidates: np.ndarray
    candidate_depth: np.ndarray
    head_centre: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel shape (X, Y, Z) of the 1 mm template grid."""
        return tuple(self.brain.shape)  # type: ignore[return-value]


def load_mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 2009 T1, GM, WM, brain mask (float32, (197, 233, 189)) and their affine, from nilearn's bundle."""
    from nilearn import datasets  # slow import: only when the model is first built

    imgs = (
        datasets.load_mni152_template(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    )
    arrays = [np.asarray(img.dataobj, dtype=np.float32) for img in imgs]
    return (*arrays, np.asarray(imgs[0].affine, dtype=np.float64))  # type: ignore[return-value]


def upsample(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linearly upsample ``small`` (a coarse grid covering the same field of view) to ``shape`` (float32)."""
    out = ndi.zoom(
        small.astype(np.float32, copy=False),
        [n / s for n, s in zip(shape, small.shape, strict=True)],
        order=1,
        grid_mode=True,
        mode="nearest",
    )
    return out[tuple(slice(0, n) for n in shape)]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, sigma: float = 1.0) -> np.ndarray:
    """Smooth zero-mean, unit-variance random field of ``shape`` (float32).

    A ``coarse``-per-axis Gaussian field (smoothed with ``sigma`` coarse voxels) is
    upsampled linearly, so the cost is one interpolation.
    """
    small = ndi.gaussian_filter(rng.standard_normal((coarse,) * len(shape)), sigma, mode="wrap")
    small = (small - small.mean()) / (small.std() + 1e-12)
    return upsample(small, shape)


def _band(d: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    """Partial-volume fraction (1 mm ramps) of ``lo <= d < hi``."""
    return np.clip(np.minimum(d - lo, hi - d) + 0.5, 0.0, 1.0)


def _ellipsoid(g: tuple[np.ndarray, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Partial-volume fraction of an ellipsoid on sparse template-mm coordinates ``g`` (x, y, z)."""
    rho = sum(((a - c) / r) ** 2 for a, c, r in zip(g, centre, radii, strict=True))
    return np.clip((1.0 - np.sqrt(rho)) * min(radii) + 0.5, 0.0, 1.0)


def _soft_blocks(g: tuple[np.ndarray, ...]) -> np.ndarray:
    """Soft-tissue fraction of neck, face and nose (the head below and in front of the skull base)."""
    gx, gy, gz = g
    zn = np.clip((-38.0 - gz) / 20.0, 0.0, 1.0)  # 0 above the skull base, 1 in the neck
    neck = np.clip(
        (1.0 - np.sqrt((gx / (52.0 + 6.0 * zn)) ** 2 + ((gy + 22.0) / (50.0 + 10.0 * zn)) ** 2)) * 50.0 + 0.5, 0.0, 1.0
    ) * np.clip((-25.0 - gz) / 4.0, 0.0, 1.0)
    face = _ellipsoid(g, (0.0, 42.0, -52.0), (58.0, 62.0, 40.0)) * np.clip((gy + 5.0) / 4.0, 0.0, 1.0)
    nose = _ellipsoid(g, (0.0, 95.0, -45.0), (14.0, 22.0, 26.0))
    return np.maximum(np.maximum(neck, face), nose)


def _layers(d: np.ndarray, vary: np.ndarray, g: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """Outer boundaries (mm from the brain surface) of outer CSF, inner table, diploe, outer table, galea/muscle,
    fat and skin; ``vary`` (unit noise) modulates the thicknesses, temporal muscles thicken the sides."""
    gx, gy, gz = g
    lateral = (
        np.clip((np.abs(gx) - 45.0) / 15.0, 0.0, 1.0)
        * np.clip(1.0 - np.abs(gz + 5.0) / 35.0, 0.0, 1.0)
        * np.clip(1.0 - np.abs(gy + 5.0) / 45.0, 0.0, 1.0)
    )
    b1 = 1.4 + 0.5 * vary
    b2 = b1 + 1.8
    b3 = b2 + np.clip(2.6 + 1.0 * vary, 0.6, None)
    b4 = b3 + 1.7
    b5 = b4 + 1.3 + 9.0 * lateral
    b6 = b5 + 3.8 + 1.2 * vary
    return [b1, b2, b3, b4, b5, b6, b6 + 1.4]


def _grid(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse template-mm coordinates (x, y, z) of an axis-aligned grid."""
    return tuple(  # type: ignore[return-value]
        (np.arange(n, dtype=np.float32) * np.float32(affine[i, i]) + np.float32(affine[i, 3])).reshape(
            [-1 if a == i else 1 for a in range(3)]
        )
        for i, n in enumerate(shape)
    )


@functools.lru_cache(maxsize=1)
def head_model() -> HeadModel:
    """Build (once per process, ~5 s) the healthy head model; see the module docstring."""
    t1, gm, wm, mask, affine0 = load_mni()
    rng = np.random.default_rng(_ANATOMY_SEED)
    t1, gm, wm, mask = (np.pad(a, _PAD) for a in (t1, gm, wm, mask))
    affine = affine0.copy()
    affine[:3, 3] -= affine0[:3, :3] @ np.array([p[0] for p in _PAD], dtype=np.float64)
    shape = mask.shape
    brain = mask > 0.5
    z0 = _PAD[2][0]
    cord = np.zeros(shape, dtype=bool)  # spinal cord: the brainstem's lowest cross-section continued downwards
    cord[:, :, :z0] = brain[:, :, z0 : z0 + 1]
    inner = brain | cord

    # distances on a 2 mm grid (exact EDT is cheap there), upsampled where 1 mm precision matters
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] *= 2.0
    g2 = _grid(coarse_affine, inner[::2, ::2, ::2].shape)
    d2 = ndi.distance_transform_edt(~inner[::2, ::2, ::2], sampling=2.0).astype(np.float32)
    vary2 = smooth_noise(rng, d2.shape, 10, 1.0)
    head2 = np.maximum(_band(d2, -1.0, _layers(d2, vary2, g2)[-1]), _soft_blocks(g2)) > 0.5
    e2 = ndi.distance_transform_edt(head2, sampling=2.0).astype(np.float32)  # depth below the skin
    depth = ndi.distance_transform_edt(brain[::2, ::2, ::2], sampling=2.0).astype(np.float32)
    occupancy = ndi.binary_dilation(head2, iterations=2).astype(np.uint8)
    d, vary, e = (upsample(a, shape) for a in (d2, vary2, e2))
    del d2, vary2, e2, head2

    wm_ref = float(np.median(t1[wm > 0.95]))
    g = _grid(affine, shape)
    intensity = np.zeros((4, *shape), dtype=np.float32)
    table = np.array([TISSUE_INTENSITY[k] for k in TISSUES], dtype=np.float32)  # (K, 4)
    for lo in range(0, shape[2], _SLAB):
        sl = (slice(None), slice(None), slice(lo, min(lo + _SLAB, shape[2])))
        fr = _fractions(gm[sl], wm[sl], brain[sl], inner[sl], d[sl], vary[sl], e[sl], (g[0], g[1], g[2][sl]))
        intensity[(slice(None), *sl)] = np.tensordot(table.T, fr, axes=1)
        t1_brain = np.clip(t1[sl] / wm_ref, 0.0, 1.2)
        for m in (0, 1):  # the template's own T1 contrast (deep nuclei, cortex detail) blended in the brain
            intensity[(m, *sl)] = np.where(brain[sl], 0.5 * intensity[(m, *sl)] + 0.5 * t1_brain, intensity[(m, *sl)])
    parenchyma = np.round(np.clip(wm + 0.35 * gm, 0.0, 1.0) * 255).astype(np.uint8)

    # tumour-centre candidates: supratentorial parenchyma >= 9 mm deep, off the midline, on the 2 mm lattice
    gm2, wm2 = gm[::2, ::2, ::2], wm[::2, ::2, ::2]
    ok = (depth >= 9.0) & (gm2 + wm2 > 0.85) & (g2[2] > -25.0) & (np.abs(g2[0]) > 4.0)
    idx = np.argwhere(ok)
    cand = (idx @ coarse_affine[:3, :3].T + coarse_affine[:3, 3]).astype(np.float32)
    return HeadModel(
        affine=affine,
        intensity=intensity,
        brain=brain.astype(np.uint8) * np.uint8(255),
        parenchyma=parenchyma,
        coarse_affine=coarse_affine,
        depth=depth,
        occupancy=occupancy,
        candidates=cand,
        candidate_depth=depth[ok].astype(np.float32),
        head_centre=np.array([0.0, -18.0, 8.0]),
    )


def _fractions(
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
    inner: np.ndarray,
    d: np.ndarray,
    vary: np.ndarray,
    e: np.ndarray,
    g: tuple[np.ndarray, ...],
) -> np.ndarray:
    """Tissue fractions (K, X, Y, Zs) in :data:`TISSUES` order for one z-slab (inputs are slab arrays)."""
    gm = gm * brain
    wm = np.where(inner & ~brain, np.float32(0.9), wm * brain)
    csf = np.where(inner, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0)
    b1, b2, b3, b4, _, _, b7 = _layers(d, vary, g)
    csf = csf + _band(d, 0.0, b1) * ~inner
    bone = _band(d, b1, b2) + _band(d, b3, b4)
    marrow = _band(d, b2, b3)
    soft = _soft_blocks(g)
    head = np.maximum(_band(d, -1.0, b7), soft)
    gz_lo = float(g[2].min())
    below = gz_lo < -20.0  # face/neck structures exist only below the skull vault
    zeros = np.zeros_like(d)
    if below:
        vert = _ellipsoid(g, (0.0, -20.0, -95.0), (14.0, 12.0, 60.0)) * np.clip((-60.0 - g[2]) / 5.0, 0, 1)
        jaw = np.clip(
            _ellipsoid(g, (0.0, 40.0, -98.0), (46.0, 52.0, 14.0))
            - _ellipsoid(g, (0.0, 36.0, -98.0), (38.0, 44.0, 20.0)),
            0.0,
            1.0,
        )
        eyes = sum(_ellipsoid(g, (s * 32.0, 58.0, -38.0), (11.5, 12.0, 11.5)) for s in (-1.0, 1.0))
        orbits = sum(_ellipsoid(g, (s * 31.0, 50.0, -38.0), (17.0, 22.0, 16.0)) for s in (-1.0, 1.0))
        sinus = _ellipsoid(g, (0.0, 62.0, -62.0), (8.0, 18.0, 14.0)) + sum(
            _ellipsoid(g, (s * 24.0, 45.0, -68.0), (12.0, 16.0, 15.0)) for s in (-1.0, 1.0)
        )
    else:
        vert = jaw = eyes = orbits = sinus = zeros
    free = np.clip(head - np.clip(wm + gm + csf + bone + marrow, 0.0, 1.0), 0.0, 1.0)
    skin = np.minimum(np.clip(1.5 - e, 0.0, 1.0) * head, free)
    free = free - skin
    fat = np.minimum(np.maximum(_band(e, 1.5, 5.5) * head, np.clip(orbits - eyes, 0.0, 1.0)), free)
    free = free - fat
    bone_extra = np.minimum(np.maximum(0.35 * vert, jaw), free)
    free = free - bone_extra
    marrow_extra = np.minimum(0.65 * vert, free)
    free = free - marrow_extra
    vitreous = np.minimum(eyes, free)
    free = free - vitreous
    muscle = np.maximum(free * (1.0 - np.clip(sinus, 0.0, 1.0)), 0.0)  # air sinuses: no signal
    return np.stack([wm, gm, csf, bone + bone_extra, marrow + marrow_extra, fat, muscle, skin, vitreous]).astype(
        np.float32, copy=False
    )
