"""Render one synthetic subject on its site's native scanner grid.

Per subject: labels and tumour geometry are drawn, the head gets a random pose
(rotation of a few to 15 degrees, translation, +-4 % head size), the template-space
maps are resampled once onto the native grid (``map_coordinates``, linear for
intensities, the mass-effect displacement folded into the sampling
coordinates), the tumour is added with partial volume, and the site's scanner
is applied: slice-profile blur, gamma, gain, smooth multiplicative bias and
Rician noise.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from scipy.special import expit

from fedglioma.constants import MODALITIES
from fedglioma.synth.anatomy import HeadModel, head_model
from fedglioma.synth.labels import LABEL_COLUMNS, Labels, clinical_row, sample_labels, stratified_uniforms
from fedglioma.synth.sites import SiteSpec, check_counts, check_seed, subject_ids
from fedglioma.synth.tumour import (
    COMPARTMENTS,
    TUMOUR_INTENSITY,
    TumourGeometry,
    check_strengths,
    sample_tumour,
    tumour_in_box,
    tumour_support,
)

#: Scanner-space position of the template head centre before the random translation (mm):
#: the field of view covers the vertex down to the skull base.
_HEAD_POSITION = np.array([0.0, -14.0, -21.0])
#: Standard deviation (degrees) of the rotation about the scanner x (nod), y (roll), z (turn) axes; clipped at 15.
_ROTATION_SD = np.array([7.0, 3.5, 4.0])
_TRANSLATION_SD = np.array([4.0, 5.0, 5.0])


@dataclass(frozen=True)
class SyntheticSubject:
    """One rendered subject in native scanner space (voxel order of the site's grid).

    Attributes:
        subject: BraTS 2021 ID.
        site: site name.
        images: ``"T1"``, ``"T1c"``, ``"T2"``, ``"FLAIR"`` -> float32 (I, J, K) stored values (integers).
        seg: uint8 (I, J, K) BraTS 2021 labels (0, 1, 2, 4); ground truth even when ``has_seg`` is False.
        brain_mask: uint8 (I, J, K) ground-truth brain mask (MNI152 brain mask moved with the head, plus tumour).
        affine: (4, 4) voxel -> scanner mm.
        labels: true labels.
        clinical: clinical-table cells as written (``""`` = missing).
        has_seg: whether the site records a segmentation (``_seg`` file written).
        geometry: the tumour in template mm.
        template_from_scanner: (4, 4) scanner mm -> template (MNI) mm: the subject's pose.
    """

    subject: str
    site: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    labels: Labels
    clinical: dict[str, str]
    has_seg: bool
    geometry: TumourGeometry
    template_from_scanner: np.ndarray


def _streams(seed: int, site_index: int, subject_index: int) -> list[np.random.Generator]:
    """Independent generators (labels, tumour, pose, scanner, clinical) of one subject."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(site_index), int(subject_index)))
    return [np.random.default_rng(s) for s in ss.spawn(5)]


def _labels(spec: SiteSpec, seed: int, site_index: int, subject_index: int, rng: np.random.Generator) -> Labels:
    """The subject's labels: IDH and grade draws stratified over the site's subjects, the rest from ``rng``."""
    site_rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(site_index),)))
    return sample_labels(rng, spec.prevalence, stratified_uniforms(site_rng, subject_index))


def sample_case(
    spec: SiteSpec,
    subject_index: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    site_index: int = 0,
) -> tuple[Labels, TumourGeometry]:
    """Labels and tumour geometry of a subject without rendering images (cheap; same draws as the full render)."""
    check_seed(seed)
    rng_labels, rng_tumour, *_ = _streams(seed, site_index, subject_index)
    labels = _labels(spec, seed, site_index, subject_index, rng_labels)
    return labels, sample_tumour(rng_tumour, labels, check_strengths(strengths), head_model())


def _pose(rng: np.random.Generator, head: HeadModel) -> np.ndarray:
    """(4, 4) scanner mm -> template mm of a random head pose: rotation, translation, head size."""
    angles = np.clip(rng.standard_normal(3) * _ROTATION_SD, -15.0, 15.0)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    size = rng.uniform(0.96, 1.04, size=3)
    shift = np.clip(rng.standard_normal(3) * _TRANSLATION_SD, -12.0, 12.0) + _HEAD_POSITION
    scanner_from_template = np.eye(4)
    scanner_from_template[:3, :3] = rot @ np.diag(size)
    scanner_from_template[:3, 3] = shift - scanner_from_template[:3, :3] @ head.head_centre
    return np.linalg.inv(scanner_from_template)


@functools.lru_cache(maxsize=1)
def _slice_profile_maps(sigma_mm: tuple[float, float, float]) -> np.ndarray:
    """Healthy intensity maps (4, X, Y, Z) blurred by the site's voxel profile along the template axes."""
    maps = head_model().intensity
    if max(sigma_mm) <= 0.0:
        return maps
    return ndi.gaussian_filter(maps, (0.0, *sigma_mm), mode="constant", truncate=3.0)


def _profile_sigma(spec: SiteSpec) -> tuple[float, float, float]:
    """Gaussian sigma (mm) per template axis matching the voxel's box profile (only where > 1.7 mm)."""
    ornt = nib.orientations.axcodes2ornt(tuple(spec.orientation))
    sigma = [0.0, 0.0, 0.0]
    for k, (axis, _) in enumerate(ornt):
        v = spec.voxel_size[k]
        if v > 1.7:
            sigma[int(axis)] = round(float(np.sqrt((v * v - 1.0) / 12.0)), 3)
    return tuple(sigma)  # type: ignore[return-value]


def _box(
    shape: tuple[int, ...], native_from_template: np.ndarray, centre: np.ndarray, ext: float
) -> tuple[slice, ...] | None:
    """Native index box holding the template-mm cube ``centre +- ext`` (None if it misses the grid)."""
    corners = np.array(np.meshgrid(*[[c - ext, c + ext] for c in centre], indexing="ij")).reshape(3, -1)
    idx = native_from_template[:3, :3] @ corners + native_from_template[:3, 3:4]
    lo = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _head_voxels(shape: tuple[int, ...], coarse_from_native: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """Boolean (I, J, K) mask of native voxels that may hold signal (all head voxels; a superset).

    The head occupancy (2 mm grid, already 4 mm dilated) is looked up on a native
    subgrid of ~4 mm spacing, dilated by one subgrid voxel and expanded back.
    """
    vox = np.sqrt(np.sum(coarse_from_native[:3, :3] ** 2, axis=0)) * 2.0  # native voxel size (mm) per axis
    step = np.maximum(1, np.round(4.0 / vox)).astype(int)
    sub_shape = tuple(int(-(-n // s)) for n, s in zip(shape, step, strict=True))
    matrix = coarse_from_native.copy()
    matrix[:3, :3] = matrix[:3, :3] * step  # subgrid index -> coarse template voxel
    sub = ndi.affine_transform(occupancy, matrix, output_shape=sub_shape, order=0, mode="constant", cval=0)
    sub = ndi.binary_dilation(sub > 0, structure=np.ones((3, 3, 3), dtype=bool))
    full = sub.repeat(step[0], axis=0).repeat(step[1], axis=1).repeat(step[2], axis=2)
    return full[: shape[0], : shape[1], : shape[2]]


def _grid_points(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """(3, I, J, K) float32 points ``affine @ (i, j, k, 1)`` of the voxels in ``box``."""
    ax = [np.arange(s.start, s.stop, dtype=np.float32) for s in box]
    a = affine.astype(np.float32)
    out = np.empty((3, *(len(x) for x in ax)), dtype=np.float32)
    for r in range(3):
        out[r] = (
            a[r, 0] * ax[0][:, None, None] + a[r, 1] * ax[1][None, :, None] + a[r, 2] * ax[2][None, None, :] + a[r, 3]
        )
    return out


def _bias_fields(rng: np.random.Generator, spec: SiteSpec, affine: np.ndarray) -> np.ndarray:
    """(4, I, J, K) float32 smooth multiplicative bias, one per modality (shared coil part + own part), mean ~1.

    A random quadratic polynomial of scanner position (in units of 10 cm), exponentiated.
    """
    shape = spec.shape
    ax = [np.arange(n, dtype=np.float32) for n in shape]
    a = (affine / 100.0).astype(np.float32)
    # scanner coordinates (x, y, z), each a full (I, J, K) array built by broadcasting 1-D index ramps
    xyz = [
        a[r, 0] * ax[0][:, None, None] + a[r, 1] * ax[1][None, :, None] + a[r, 2] * ax[2][None, None, :] + a[r, 3]
        for r in range(3)
    ]
    terms = [
        xyz[0],
        xyz[1],
        xyz[2],
        xyz[0] * xyz[0],
        xyz[1] * xyz[1],
        xyz[2] * xyz[2],
        xyz[0] * xyz[1],
        xyz[0] * xyz[2],
        xyz[1] * xyz[2],
    ]
    shared = rng.standard_normal(len(terms)) * np.array([1, 1, 1, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    out = np.empty((4, *shape), dtype=np.float32)
    for m in range(4):
        coef = (0.8 * shared + 0.45 * rng.standard_normal(len(terms))).astype(np.float32) / np.float32(3.0)
        field = sum(c * t for c, t in zip(coef, terms, strict=True))
        field = field - field.mean()
        out[m] = np.exp(np.clip(spec.bias_strength * field, -1.0, 1.0))
    return out


def synthesize_subject(
    spec: SiteSpec,
    subject_index: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    site_index: int = 0,
) -> SyntheticSubject:
    """Render subject ``subject_index`` of site ``site_index`` (described by ``spec``) in memory.

    Deterministic in (``spec``, ``site_index``, ``subject_index``, ``seed``, ``strengths``).
    """
    spec.validate()
    check_counts(site_index, subject_index + 1)
    check_seed(seed)
    strengths = check_strengths(strengths)
    head = head_model()
    rng_labels, rng_tumour, rng_pose, rng_scanner, rng_clinical = _streams(seed, site_index, subject_index)
    labels = _labels(spec, seed, site_index, subject_index, rng_labels)
    geom = sample_tumour(rng_tumour, labels, strengths, head)
    template_from_scanner = _pose(rng_pose, head)
    affine = spec.base_affine()
    shape = spec.shape
    template_from_native = template_from_scanner @ affine  # native voxel -> template mm
    tvox_from_tmm = np.linalg.inv(head.affine)

    # one resampling of the template maps: affine everywhere, displaced (mass effect) near the tumour
    tvox_from_native = tvox_from_tmm @ template_from_native
    maps = _slice_profile_maps(_profile_sigma(spec))
    inside = _head_voxels(shape, np.linalg.inv(head.coarse_affine) @ template_from_native, head.occupancy)
    idx = np.nonzero(inside)
    t = tvox_from_native.astype(np.float32)
    coords = t[:3, :3] @ np.stack(idx).astype(np.float32) + t[:3, 3:4]  # (3, N) template voxels
    del idx
    signal = np.zeros((4, *shape), dtype=np.float32)
    for m in range(4):
        signal[m][inside] = ndi.map_coordinates(
            maps[m], coords, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
        )
    brain_u8 = np.zeros(shape, dtype=np.uint8)
    brain_u8[inside] = ndi.map_coordinates(head.brain, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    del coords
    seg = np.zeros(shape, dtype=np.uint8)
    box = _box(shape, np.linalg.inv(template_from_native), geom.centre, geom.extent)
    if box is not None:
        points = _grid_points(template_from_native, box)
        near = tumour_support(points, geom)
        pts = points[:, near]  # (3, N) template mm of the voxels the tumour or its mass effect can reach
        del points
        src, fr = tumour_in_box(pts, geom, head, float(np.median(spec.voxel_size)))
        t = tvox_from_tmm.astype(np.float32)
        src_vox = t[:3, :3] @ src + t[:3, 3:4]
        table = np.array([TUMOUR_INTENSITY[c] for c in COMPARTMENTS], dtype=np.float32)  # (C, 4)
        table *= np.exp(rng_scanner.normal(0.0, 0.05, size=table.shape)).astype(np.float32)
        comps = [getattr(fr, c) for c in COMPARTMENTS]
        healthy = 1.0 - fr.total
        flair_net = 1.0 - 0.6 * geom.mismatch * expit((0.85 - fr.rho) / 0.04)  # T2-FLAIR mismatch: dark core
        for m in range(4):
            value = (
                ndi.map_coordinates(
                    maps[m], src_vox, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
                )
                * healthy
            )
            for c, name in enumerate(COMPARTMENTS):
                value += table[c, m] * (comps[c] * flair_net if (name == "net" and m == 3) else comps[c])
            signal[(m, *box)][near] = value
        brain_u8[box][near] = np.clip(
            np.rint(ndi.map_coordinates(head.brain, src_vox, order=1, mode="constant", cval=0.0, prefilter=False)),
            0,
            255,
        )
        seg[box][near] = fr.seg()
    brain_mask = ((brain_u8 >= 128) | (seg > 0)).astype(np.uint8)

    # scanner: gamma, gain, bias field, Rician noise; stored as integers
    bias = _bias_fields(rng_scanner, spec, affine)
    gains = 1000.0 * spec.intensity_scale * np.asarray(spec.modality_gain) * np.exp(rng_scanner.normal(0, 0.05, 4))
    images = {}
    for m, name in enumerate(MODALITIES):
        x = np.maximum(signal[m], 0.0)
        if spec.gamma != 1.0:
            x = x ** np.float32(spec.gamma)
        x *= bias[m] * np.float32(gains[m])
        sigma = np.float32(spec.noise * gains[m])
        n1 = rng_scanner.standard_normal(shape, dtype=np.float32)
        n2 = rng_scanner.standard_normal(shape, dtype=np.float32)
        x = np.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)
        images[name] = np.clip(np.rint(x), 0, 32767).astype(np.float32)

    u = rng_clinical.random(len(LABEL_COLUMNS) + 1)
    missing = {col: bool(u[i] < spec.missing_rate) for i, col in enumerate(LABEL_COLUMNS)}
    clinical = clinical_row(labels, grade_style=spec.grade_style, missing_labels=spec.missing_labels, missing=missing)
    has_seg = subject_index == 0 or bool(u[-1] < spec.seg_fraction)
    return SyntheticSubject(
        subject=subject_ids(site_index, subject_index + 1)[-1],
        site=spec.name,
        images=images,
        seg=seg,
        brain_mask=brain_mask,
        affine=affine,
        labels=labels,
        clinical=clinical,
        has_seg=has_seg,
        geometry=geom,
        template_from_scanner=template_from_scanner,
    )
