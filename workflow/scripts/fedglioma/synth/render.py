"""Render one synthetic subject on its site's grid(s).

Per subject: labels and tumour geometry are drawn and the head gets its pose: a random one
(rotation of a few to 15 degrees, translation, +-4 % head size) on a scanner grid, or the
identity in a template space (MNI152; SRI24 through the template-to-template affine). The
template-space maps are resampled once onto each grid (``map_coordinates``, linear for
intensities, the mass-effect displacement folded into the sampling coordinates), the tumour (and
a resection cavity) is added with partial volume, and the site's scanner is applied: slice-profile
blur, gamma, gain, smooth multiplicative bias and Rician noise. Skull-stripped sites keep the
ground-truth brain only (background exactly 0). A site may give each modality its own grid
(e.g. 2D sequences with their own slice thickness, field of view and orientation) and move the
head a little between sequences; the segmentation and brain mask are on the T1c grid.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from scipy.special import expit

from fedglioma.constants import MODALITIES
from fedglioma.errors import ConfigError
from fedglioma.synth.anatomy import HeadModel, head_model
from fedglioma.synth.clinical import clinical_record
from fedglioma.synth.labels import LABEL_COLUMNS, Labels, sample_labels, stratified_uniforms
from fedglioma.synth.sites import GridSpec, SiteSpec, check_counts, check_seed, site_subject_ids
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
#: Internal segmentation label of a resection cavity (written as label 4 by the brats2023 layout).
CAVITY = 5
#: Relative (T1, T1c, T2, FLAIR) signal of a resection cavity: fluid, FLAIR-suppressed.
CAVITY_INTENSITY: tuple[float, float, float, float] = (0.16, 0.18, 1.0, 0.12)
#: Reference modality: the segmentation and brain mask are on its grid.
REFERENCE = "T1c"

#: A template-to-template transform: an ANTs ``transform.mat`` (fixed MNI152, moving the space), the folder
#: holding it, or a (4, 4) RAS affine mapping MNI152 mm to the space's mm.
TemplateTransform = str | Path | np.ndarray


@dataclass(frozen=True)
class SyntheticSubject:
    """One rendered subject (voxel order of its site's grid(s)).

    Attributes:
        subject: subject ID (the site's ID style).
        site: site name.
        images: ``"T1"``, ``"T1c"``, ``"T2"``, ``"FLAIR"`` -> float32 (I, J, K) stored values (integers),
            each on its own grid (``affines``).
        seg: uint8 labels on the T1c grid: 0, 1 (necrotic / non-enhancing core), 2 (edema), 4 (enhancing),
            5 (resection cavity, not tumour); ground truth even when ``has_seg`` is False.
        brain_mask: uint8 ground-truth brain mask on the T1c grid (MNI152 brain mask moved with the head,
            plus tumour and cavity).
        affine: (4, 4) voxel -> scanner mm of the T1c grid.
        labels: true labels.
        clinical: clinical-table cells as written (header -> text; ``""`` or the style's token = missing).
        recorded: task -> the label value the clinical row records (None = missing); what a correct
            harmonisation of the row gives.
        has_seg: whether the site records a segmentation (file written).
        geometry: the tumour in template mm.
        template_from_scanner: (4, 4) scanner mm -> template (MNI) mm of the T1c: the subject's pose.
        affines: modality -> (4, 4) voxel -> scanner mm of its grid.
        cavity: whether the subject has a resection cavity.
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
    affines: dict[str, np.ndarray] = field(default_factory=dict)
    recorded: dict[str, float | None] = field(default_factory=dict)
    cavity: bool = False


def _streams(seed: int, site_index: int, subject_index: int) -> list[np.random.Generator]:
    """Independent generators of one subject: labels, tumour, pose, scanner, clinical, cavity, motion."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(site_index), int(subject_index)))
    return [np.random.default_rng(s) for s in ss.spawn(7)]


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


def clinical_case(
    spec: SiteSpec, subject_index: int, seed: int, *, site_index: int = 0
) -> tuple[dict[str, str], dict[str, float | None], bool]:
    """A subject's clinical row, what it records, and whether a segmentation is written (no images: cheap)."""
    check_seed(seed)
    rng_labels, _, _, _, rng_clinical, *_ = _streams(seed, site_index, subject_index)
    labels = _labels(spec, seed, site_index, subject_index, rng_labels)
    u = rng_clinical.random(len(LABEL_COLUMNS) + 1)
    missing = {col: bool(u[i] < spec.missing_rate) for i, col in enumerate(LABEL_COLUMNS)}
    has_seg = subject_index == 0 or bool(u[-1] < spec.seg_fraction)
    sid = site_subject_ids(spec, site_index, subject_index + 1)[-1]
    cells, recorded = clinical_record(
        spec.clinical_style,
        sid,
        labels,
        grade_style=spec.grade_style,
        missing_labels=spec.missing_labels,
        missing=missing,
        rng=rng_clinical,
    )
    return cells, recorded, has_seg


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


def _motion(rng: np.random.Generator, sd: float, centre: np.ndarray) -> np.ndarray:
    """(4, 4) rigid scanner-mm motion about ``centre``: rotations and shifts of SD ``sd`` degrees / mm (clipped 3 SD)."""
    angles = np.clip(rng.standard_normal(3) * sd, -3.0 * sd, 3.0 * sd)
    shift = np.clip(rng.standard_normal(3) * sd, -3.0 * sd, 3.0 * sd)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    out[:3, 3] = centre + shift - out[:3, :3] @ centre
    return out


def read_ants_affine(path: str | Path) -> np.ndarray:
    """(4, 4) RAS-mm matrix of an ANTs/ITK affine ``.mat`` file, in ITK's direction: fixed-space point ->
    moving-space point (``y = A (x - c) + t + c``, converted from LPS)."""
    import scipy.io

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"template transform {p} not found: run the template_transform rule first")
    mat = scipy.io.loadmat(str(p))
    keys = [k for k in mat if k.startswith(("AffineTransform", "MatrixOffsetTransformBase"))]
    if len(keys) != 1 or "fixed" not in mat:
        raise ConfigError(f"{p} is not an ANTs affine transform (keys {sorted(k for k in mat if not k.startswith('__'))})")
    par = np.asarray(mat[keys[0]], dtype=np.float64).ravel()
    centre = np.asarray(mat["fixed"], dtype=np.float64).ravel()
    a, t = par[:9].reshape(3, 3), par[9:12]
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + centre - a @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def space_from_mni(space: str, transforms: Mapping[str, TemplateTransform] | None) -> np.ndarray:
    """(4, 4) RAS affine MNI152 mm -> ``space`` mm (identity for MNI152)."""
    if space == "MNI152":
        return np.eye(4)
    given = (transforms or {}).get(space)
    if given is None:
        raise ConfigError(
            f"a site in {space} space needs the {space}-to-MNI152 template transform "
            f"(template_transforms={{'{space}': 'results/templates/{space}_to_MNI152'}}, the template_transform rule)"
        )
    if isinstance(given, np.ndarray):
        m = np.asarray(given, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-3:
            raise ConfigError(f"template transform for {space} must be an invertible (4, 4) affine")
        return m
    p = Path(given)
    # fixed = MNI152 (target), moving = the space (source): ITK maps MNI points to the space's points
    if p.is_dir():
        from fedglioma.preprocess.templates import template_transform_file

        p = template_transform_file(p)
    return read_ants_affine(p)


@functools.lru_cache(maxsize=2)
def template_grid(space: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and (4, 4) affine of a template's 1 mm grid (``fedglioma.preprocess.templates``)."""
    from fedglioma.preprocess.templates import load_template

    img = load_template(space, resolution_mm=1.0).image
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)  # type: ignore[return-value]


@functools.lru_cache(maxsize=8)
def _profile_map(modality: int, sigma_mm: tuple[float, float, float]) -> np.ndarray:
    """Healthy intensity map of one modality blurred by the acquisition's slice profile along the template axes."""
    maps = head_model().intensity
    if max(sigma_mm) <= 0.0:
        return maps[modality]
    return ndi.gaussian_filter(maps[modality], sigma_mm, mode="constant", truncate=3.0)


def _sigma(thickness: float) -> float:
    """Gaussian sigma (mm) matching a box slice profile of ``thickness`` mm (0 up to 1.7 mm)."""
    return round(float(np.sqrt((thickness * thickness - 1.0) / 12.0)), 3) if thickness > 1.7 else 0.0


def _profile_sigma(grid: GridSpec) -> tuple[float, float, float]:
    """Gaussian sigma (mm) per template axis matching a native grid's voxel profile (only where > 1.7 mm)."""
    ornt = nib.orientations.axcodes2ornt(tuple(grid.orientation))
    sigma = [0.0, 0.0, 0.0]
    for k, (axis, _) in enumerate(ornt):
        sigma[int(axis)] = _sigma(grid.voxel_size[k])
    return tuple(sigma)  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _brain_occupancy() -> np.ndarray:
    """uint8 map on the head's 2 mm grid: 1 within 4 mm of the brain (where a skull-stripped image has signal)."""
    return ndi.binary_dilation(head_model().depth > 0, iterations=2).astype(np.uint8)


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


def _occupied_voxels(shape: tuple[int, ...], coarse_from_native: np.ndarray, occupancy: np.ndarray) -> np.ndarray:
    """Boolean (I, J, K) mask of native voxels that may hold signal (a superset of ``occupancy``).

    The occupancy (2 mm grid, already dilated) is looked up on a native subgrid of ~4 mm spacing,
    dilated by one subgrid voxel and expanded back.
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


@dataclass(frozen=True)
class _Cavity:
    """A resection cavity: an ellipsoid in template mm (centre, axes as columns, radii)."""

    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray

    def fraction(self, points: np.ndarray) -> np.ndarray:
        """Partial-volume fraction (1 mm ramp) at template-mm ``points`` (3, N)."""
        rel = points - self.centre.reshape(3, 1).astype(np.float32)
        local = np.tensordot((self.axes / self.radii).T.astype(np.float32), rel, axes=1)
        rho = np.sqrt(np.sum(local * local, axis=0))
        return np.clip((1.0 - rho) * np.float32(self.radii.min()) + 0.5, 0.0, 1.0).astype(np.float32)


def _sample_cavity(rng: np.random.Generator, spec: SiteSpec, geom: TumourGeometry) -> _Cavity | None:
    """A cavity next to the tumour centre for a ``cavity_fraction`` of subjects (always 8 draws)."""
    u = rng.random(8)
    if u[0] >= spec.cavity_fraction:
        return None
    direction = u[1:4] - 0.5
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    offset = geom.axes @ (direction * geom.radii * (0.25 + 0.4 * u[4]))
    radii = geom.radii * (0.45 + 0.3 * u[5:8])
    return _Cavity(centre=geom.centre + offset, axes=geom.axes, radii=np.maximum(radii, 4.0))


@dataclass
class _Grid:
    """One grid to render: its modalities, shape, voxel -> scanner affine and pose."""

    modalities: list[str]
    shape: tuple[int, int, int]
    affine: np.ndarray
    template_from_scanner: np.ndarray
    sigma: dict[str, tuple[float, float, float]]

    @property
    def voxel_mm(self) -> float:
        return float(np.median(np.sqrt(np.sum(self.affine[:3, :3] ** 2, axis=0))))


def _grids(
    spec: SiteSpec,
    head: HeadModel,
    rng_pose: np.random.Generator,
    rng_motion: np.random.Generator,
    transforms: Mapping[str, TemplateTransform] | None,
) -> list[_Grid]:
    """The grids of a subject (modalities sharing a grid and pose render together); the first holds T1c."""
    if spec.space != "native":
        shape, affine = template_grid(spec.space)
        template_from_scanner = np.linalg.inv(space_from_mni(spec.space, transforms))
        sigma = {m: (0.0, 0.0, _sigma(spec.acquired_slice_mm[i])) for i, m in enumerate(MODALITIES)}
        return [_Grid([REFERENCE, *(m for m in MODALITIES if m != REFERENCE)], shape, affine, template_from_scanner,
                      sigma)]
    pose = _pose(rng_pose, head)
    centre = (np.linalg.inv(pose) @ np.append(head.head_centre, 1.0))[:3]  # head centre in scanner mm
    grids: list[_Grid] = []
    for m in (REFERENCE, *(m for m in MODALITIES if m != REFERENCE)):
        g = spec.grid_spec(m)
        move = pose
        if spec.sequence_motion > 0 and m != REFERENCE:
            move = pose @ _motion(rng_motion, spec.sequence_motion, centre)
        same = [
            x for x in grids
            if x.shape == g.shape and np.allclose(x.affine, g.affine()) and np.allclose(x.template_from_scanner, move)
        ]
        if same:
            same[0].modalities.append(m)
            same[0].sigma[m] = _profile_sigma(g)
        else:
            grids.append(_Grid([m], g.shape, g.affine(), move, {m: _profile_sigma(g)}))
    return grids


def _render_grid(
    grid: _Grid,
    head: HeadModel,
    geom: TumourGeometry,
    table: np.ndarray,
    cavity: _Cavity | None,
    *,
    brain_only: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Healthy head + tumour on one grid: ``(signal per modality, brain u8 0..255, seg, region)``.

    ``region`` (bool) holds the voxels that were rendered (the head, or only the brain for
    skull-stripped sites); signal is 0 elsewhere.
    """
    shape = grid.shape
    template_from_native = grid.template_from_scanner @ grid.affine  # native voxel -> template mm
    tvox_from_tmm = np.linalg.inv(head.affine)
    tvox_from_native = tvox_from_tmm @ template_from_native
    occupancy = _brain_occupancy() if brain_only else head.occupancy
    region = _occupied_voxels(shape, np.linalg.inv(head.coarse_affine) @ template_from_native, occupancy)
    idx = np.nonzero(region)
    t = tvox_from_native.astype(np.float32)
    coords = t[:3, :3] @ np.stack(idx).astype(np.float32) + t[:3, 3:4]  # (3, N) template voxels
    del idx
    maps = {m: _profile_map(MODALITIES.index(m), grid.sigma[m]) for m in grid.modalities}
    signal = {}
    for m in grid.modalities:
        signal[m] = np.zeros(shape, dtype=np.float32)
        signal[m][region] = ndi.map_coordinates(
            maps[m], coords, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
        )
    brain_u8 = np.zeros(shape, dtype=np.uint8)
    brain_u8[region] = ndi.map_coordinates(head.brain, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    del coords
    seg = np.zeros(shape, dtype=np.uint8)
    box = _box(shape, np.linalg.inv(template_from_native), geom.centre, geom.extent)
    if box is not None:
        points = _grid_points(template_from_native, box)
        near = tumour_support(points, geom)
        pts = points[:, near]  # (3, N) template mm of the voxels the tumour or its mass effect can reach
        del points
        src, fr = tumour_in_box(pts, geom, head, grid.voxel_mm)
        t = tvox_from_tmm.astype(np.float32)
        src_vox = t[:3, :3] @ src + t[:3, 3:4]
        comps = [getattr(fr, c) for c in COMPARTMENTS]
        healthy = 1.0 - fr.total
        flair_net = 1.0 - 0.6 * geom.mismatch * expit((0.85 - fr.rho) / 0.04)  # T2-FLAIR mismatch: dark core
        brain_near = np.clip(
            np.rint(ndi.map_coordinates(head.brain, src_vox, order=1, mode="constant", cval=0.0, prefilter=False)),
            0,
            255,
        )
        hole = cavity.fraction(pts) * (brain_near / np.float32(255.0)) if cavity is not None else None
        for m in grid.modalities:
            k = MODALITIES.index(m)
            value = (
                ndi.map_coordinates(
                    maps[m], src_vox, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
                )
                * healthy
            )
            for c, name in enumerate(COMPARTMENTS):
                value += table[c, k] * (comps[c] * flair_net if (name == "net" and k == 3) else comps[c])
            if hole is not None:
                value = value * (1.0 - hole) + np.float32(CAVITY_INTENSITY[k]) * hole
            signal[m][box][near] = value
        brain_u8[box][near] = brain_near
        labels = fr.seg()
        if hole is not None:
            labels[hole >= 0.5] = CAVITY
        seg[box][near] = labels
        region[box] |= near
    return signal, brain_u8, seg, region


def _bias_coefficients(rng: np.random.Generator) -> np.ndarray:
    """(4, 9) quadratic bias-field coefficients, one row per modality (a shared coil part + its own part)."""
    weights = np.array([1, 1, 1, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    shared = rng.standard_normal(9) * weights
    return np.stack([(0.8 * shared + 0.45 * rng.standard_normal(9)) / 3.0 for _ in range(4)]).astype(np.float32)


def _bias(coef: np.ndarray, strength: float, affine: np.ndarray, shape: tuple[int, ...],
          idx: tuple[np.ndarray, ...] | None) -> np.ndarray:
    """Smooth multiplicative bias (mean log 0) at all voxels (``idx`` None, shape ``shape``) or at ``idx`` (N,).

    A quadratic polynomial of scanner position in units of 10 cm, exponentiated.
    """
    a = (affine / 100.0).astype(np.float32)
    if idx is None:
        ax = [np.arange(n, dtype=np.float32) for n in shape]
        xyz = [
            a[r, 0] * ax[0][:, None, None] + a[r, 1] * ax[1][None, :, None] + a[r, 2] * ax[2][None, None, :] + a[r, 3]
            for r in range(3)
        ]
    else:
        ijk = [i.astype(np.float32) for i in idx]
        xyz = [a[r, 0] * ijk[0] + a[r, 1] * ijk[1] + a[r, 2] * ijk[2] + a[r, 3] for r in range(3)]
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    field = coef[0] * xyz[0] + coef[1] * xyz[1] + coef[2] * xyz[2]
    for c, (p, q) in zip(coef[3:], pairs, strict=True):
        field += c * (xyz[p] * xyz[q])
    field -= field.mean()
    return np.exp(np.clip(np.float32(strength) * field, -1.0, 1.0))


def synthesize_subject(
    spec: SiteSpec,
    subject_index: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    site_index: int = 0,
    template_transforms: Mapping[str, TemplateTransform] | None = None,
) -> SyntheticSubject:
    """Render subject ``subject_index`` of site ``site_index`` (described by ``spec``) in memory.

    ``template_transforms``: for a site in SRI24 space, ``{"SRI24": <transform>}`` (see
    :data:`TemplateTransform`). Deterministic in (``spec``, ``site_index``, ``subject_index``, ``seed``,
    ``strengths``, transforms).
    """
    spec.validate()
    check_counts(site_index, subject_index + 1)
    check_seed(seed)
    strengths = check_strengths(strengths)
    head = head_model()
    rng_labels, rng_tumour, rng_pose, rng_scanner, _, rng_cavity, rng_motion = _streams(seed, site_index, subject_index)
    labels = _labels(spec, seed, site_index, subject_index, rng_labels)
    geom = sample_tumour(rng_tumour, labels, strengths, head)
    cavity = _sample_cavity(rng_cavity, spec, geom)
    grids = _grids(spec, head, rng_pose, rng_motion, template_transforms)

    # scanner draws, in a fixed order: tumour intensity jitter, bias coefficients, gains, then noise per modality
    table = np.array([TUMOUR_INTENSITY[c] for c in COMPARTMENTS], dtype=np.float32)  # (C, 4)
    table *= np.exp(rng_scanner.normal(0.0, 0.05, size=table.shape)).astype(np.float32)
    coef = _bias_coefficients(rng_scanner)
    gains = 1000.0 * spec.intensity_scale * np.asarray(spec.modality_gain) * np.exp(rng_scanner.normal(0, 0.05, 4))

    rendered: dict[str, tuple[np.ndarray, np.ndarray, _Grid]] = {}  # modality -> (signal, stored region, grid)
    seg = brain_mask = None
    for grid in grids:
        signal, brain_u8, g_seg, region = _render_grid(grid, head, geom, table, cavity, brain_only=spec.skull_stripped)
        mask = (brain_u8 >= 128) | (g_seg > 0)
        if REFERENCE in grid.modalities:
            seg, brain_mask = g_seg, mask.astype(np.uint8)
        keep = mask if spec.skull_stripped else None  # skull stripping: exactly 0 outside the brain
        for m in grid.modalities:
            rendered[m] = (signal[m], keep, grid)
        del region
    assert seg is not None and brain_mask is not None

    images = {}
    for k, name in enumerate(MODALITIES):
        signal, keep, grid = rendered[name]
        idx = np.nonzero(keep) if keep is not None else None
        x = signal[idx] if idx is not None else signal
        x = np.maximum(x, 0.0)
        if spec.gamma != 1.0:
            x = x ** np.float32(spec.gamma)
        x *= _bias(coef[k], spec.bias_strength, grid.affine, grid.shape, idx) * np.float32(gains[k])
        sigma = np.float32(spec.noise * gains[k])
        n1 = rng_scanner.standard_normal(x.shape, dtype=np.float32)
        n2 = rng_scanner.standard_normal(x.shape, dtype=np.float32)
        x = np.clip(np.rint(np.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2)), 0, 32767)
        if idx is not None:
            out = np.zeros(grid.shape, dtype=np.float32)
            out[idx] = x
            images[name] = out
        else:
            images[name] = x.astype(np.float32, copy=False)
        del rendered[name]

    cells, recorded, has_seg = clinical_case(spec, subject_index, seed, site_index=site_index)
    ref = grids[0]
    return SyntheticSubject(
        subject=site_subject_ids(spec, site_index, subject_index + 1)[-1],
        site=spec.name,
        images=images,
        seg=seg,
        brain_mask=brain_mask,
        affine=ref.affine,
        labels=labels,
        clinical=cells,
        has_seg=has_seg,
        geometry=geom,
        template_from_scanner=ref.template_from_scanner,
        affines={m: next(g.affine for g in grids if m in g.modalities) for m in MODALITIES},
        recorded=recorded,
        cavity=cavity is not None and bool((seg == CAVITY).any()),
    )
