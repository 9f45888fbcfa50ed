"""Synthetic gliomas: label-dependent geometry and its partial-volume tissue fractions.

A tumour is a noise-deformed ellipsoid (core: necrosis, enhancing and
non-enhancing tumour) inside a larger, more irregular edema ellipsoid that
spreads along white matter; it displaces the surrounding brain (mass effect).
Its geometry is sampled from the subject's labels with a documented strength
per phenotype (``DEFAULT_STRENGTHS``), all in template (MNI) millimetres, so the
same tumour can be rendered on any grid: the native scanner grid of
``render.synthesize_subject`` or a cheap template grid (:func:`template_seg`).

Phenotypes (strength 0 = independent of the label, 1 = fully label-specific;
each parameter is ``(1 - s) * label-free draw + s * label-specific draw``):

* ``idh``: IDH-mutant tumours lie frontally, enhance little and, when 1p/19q-intact,
  show the T2-FLAIR mismatch sign (FLAIR-dark core with a bright rim).
* ``codeletion``: codeleted tumours are cortical (shallow), with calcification-like dark
  foci and ill-defined (wide) margins.
* ``grade``: grade 4 means larger tumours with central necrosis, ring enhancement and
  larger edema; grade 2 small, non-enhancing, little edema.
* ``mgmt``: a weak signal: methylated tumours have somewhat less edema and enhancement.
* ``mass_effect``: how much the tumour pushes the surrounding brain away (0 = none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from scipy.special import expit, ndtri

from fedglioma.settings import PhenotypeStrengths, section_params
from fedglioma.synth.anatomy import HeadModel
from fedglioma.synth.labels import Labels

#: Default phenotype strengths (``demo.strengths``): learnable but not trivial (see docs/synth.md).
DEFAULT_STRENGTHS: dict[str, float] = PhenotypeStrengths().model_dump()

#: Relative signal of the tumour compartments in (T1, T1c, T2, FLAIR) (WM T1 = 1).
TUMOUR_INTENSITY: dict[str, tuple[float, float, float, float]] = {
    "edema": (0.62, 0.64, 0.86, 0.92),
    "net": (0.52, 0.55, 0.92, 0.86),  # non-enhancing tumour
    "necrosis": (0.30, 0.32, 1.00, 0.45),
    "enhancing": (0.60, 1.35, 0.78, 0.82),
    "calcification": (0.25, 0.25, 0.12, 0.12),
}
#: Amplitude of the edema's shape deformation (log-radius noise; noise clipped at 2 SD).
_EDEMA_IRREGULARITY = 0.2
#: Compartments in the order of :attr:`TumourFractions.stack`.
COMPARTMENTS: tuple[str, ...] = tuple(TUMOUR_INTENSITY)


def check_strengths(strengths: Mapping[str, float] | None) -> dict[str, float]:
    """Defaults overridden by ``strengths``; unknown names or values outside [0, 1] raise ConfigError."""
    return section_params(PhenotypeStrengths, strengths or {}, "demo.strengths")


@dataclass(frozen=True)
class TumourGeometry:
    """One tumour in template (MNI) millimetres.

    Attributes:
        centre: (3,) template-mm centre.
        axes: (3, 3) rotation whose columns are the ellipsoid axes.
        radii: (3,) core semi-axes (mm).
        edema_scale: edema semi-axes / core semi-axes (>= 1).
        necrosis: relative radius of the necrotic centre (0 = none, < 1).
        enhancement: fraction of the viable core that enhances (0..1).
        mismatch: T2-FLAIR mismatch degree (0..1): FLAIR suppression of the non-enhancing core.
        calcification: density (0..1) of calcification-like dark foci in the non-enhancing core.
        margin: width (mm) of the core boundary transition (ill-defined margins are wide).
        irregularity: amplitude of the shape deformation (log-radius noise).
        mass_effect: radius (mm) of the brain volume displaced by the tumour.
        noise_seed: seed of the deformation and texture fields.
    """

    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    edema_scale: float
    necrosis: float
    enhancement: float
    mismatch: float
    calcification: float
    margin: float
    irregularity: float
    mass_effect: float
    noise_seed: int

    @property
    def extent(self) -> float:
        """Half-side (mm) of a cube around ``centre`` that holds the tumour, its edema and its mass effect."""
        return float(self.radii.max() * self.reach + 10.0)

    @property
    def reach(self) -> float:
        """Largest normalised radius (units of the core radii) of core or edema after the shape deformation."""
        return float(self.edema_scale * math.exp(2.0 * max(_EDEMA_IRREGULARITY, self.irregularity)))


def _mix(s: float, base: float, label: float) -> float:
    return (1.0 - s) * base + s * label


def sample_tumour(
    rng: np.random.Generator, labels: Labels, strengths: Mapping[str, float], head: HeadModel
) -> TumourGeometry:
    """Draw a tumour for ``labels``; the number of draws never depends on the labels."""
    s = check_strengths(strengths)
    si, sc, sg, sm = s["idh"], s["codeletion"], s["grade"], s["mgmt"]
    mut, codel, meth, g4 = labels.idh == 1, labels.codeletion == 1, labels.mgmt == 1, labels.grade == 4
    u = rng.random(20)
    n = rng.standard_normal(5)

    # location: frontal for IDH-mutant, cortical (shallow) for codeleted; else anywhere in the parenchyma
    y, depth = head.candidates[:, 1].astype(np.float64), head.candidate_depth.astype(np.float64)
    w_idh = 0.15 + expit((y - 8.0) / 6.0) if mut else np.ones_like(y)
    w = (1.0 - si) + si * w_idh / w_idh.mean()
    if codel:
        w_cod = expit((16.0 - depth) / 2.5) * (0.3 + expit((y - 8.0) / 6.0))
        w = w * ((1.0 - sc) + sc * w_cod / w_cod.mean())
    idx = int(np.searchsorted(np.cumsum(w), u[0] * w.sum(), side="right"))
    centre = head.candidates[min(idx, len(w) - 1)].astype(np.float64) + (u[1:4] - 0.5) * 2.0

    grade_median = {2: 13.0, 3: 15.0, 4: 19.5}[labels.grade]
    r_mean = math.exp(_mix(sg, math.log(15.0) + 0.22 * n[0], math.log(grade_median) + 0.16 * n[1]))
    ratios = np.exp(0.12 * n[2:5])
    radii = r_mean * ratios / np.prod(ratios) ** (1.0 / 3.0)
    axes = Rotation.from_rotvec(rng.standard_normal(3) * 1.5).as_matrix()

    es_label = {2: 1.05 + 0.35 * u[4], 3: 1.2 + 0.5 * u[4], 4: 1.7 + 0.8 * u[4]}[labels.grade]
    edema_scale = _mix(sg, 1.15 + 0.95 * u[5], es_label)
    if meth:
        edema_scale = 1.0 + (edema_scale - 1.0) * (1.0 - 0.3 * sm)
    necrosis = _mix(sg, 0.5 * u[6] * (u[7] < 0.5), (0.4 + 0.3 * u[8]) if g4 else 0.0)
    enh_label = {2: 0.1 * u[9], 3: 0.1 + 0.25 * u[9], 4: 0.6 + 0.35 * u[9]}[labels.grade]
    enhancement = _mix(sg, 0.05 + 0.65 * u[10], enh_label)
    if mut:
        enhancement *= 1.0 - 0.5 * si
    if meth:
        enhancement *= 1.0 - 0.1 * sm
    mismatch = _mix(si, 0.2 * u[11], (0.6 + 0.4 * u[12]) if (mut and not codel) else 0.0)
    calcification = _mix(sc, 0.15 * u[13], (0.5 + 0.5 * u[14]) if codel else 0.0)
    margin = _mix(sc, 0.8 + 1.0 * u[15], (2.5 + 2.0 * u[16]) if codel else 0.8 + 0.8 * u[15])
    irregularity = _mix(sc, 0.12 + 0.12 * u[17], (0.24 + 0.06 * u[18]) if codel else 0.12 + 0.12 * u[17])
    mass_effect = s["mass_effect"] * r_mean * (0.4 + 0.3 * u[19])
    return TumourGeometry(
        centre=centre,
        axes=axes,
        radii=radii,
        edema_scale=float(edema_scale),
        necrosis=float(necrosis),
        enhancement=float(np.clip(enhancement, 0.0, 1.0)),
        mismatch=float(mismatch),
        calcification=float(calcification),
        margin=float(margin),
        irregularity=float(irregularity),
        mass_effect=float(mass_effect),
        noise_seed=int(rng.integers(2**31)),
    )


@dataclass(frozen=True)
class TumourFractions:
    """Partial-volume fractions of the tumour compartments at a set of points (all arrays of one shape).

    ``core = necrosis + enhancing + net + calcification``; ``edema`` lies outside the core;
    ``rho`` is the deformed normalised core radius (< 1 inside the core).
    """

    edema: np.ndarray
    net: np.ndarray
    necrosis: np.ndarray
    enhancing: np.ndarray
    calcification: np.ndarray
    core: np.ndarray
    rho: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Tumour (core + edema) fraction."""
        return self.core + self.edema

    def seg(self) -> np.ndarray:
        """BraTS 2021 labels (uint8): 2 = edema, 1 = necrotic/non-enhancing core, 4 = enhancing, 0 = none.

        A voxel is tumour when core + edema >= 1/2, core when core >= 1/2, and
        enhancing when enhancing tumour is at least half of its core.
        """
        seg = np.where(self.total >= 0.5, 2, 0).astype(np.uint8)
        core = self.core >= 0.5
        seg[core] = 1
        seg[core & (self.enhancing >= 0.5 * self.core)] = 4
        return seg


def _noise_fields(geom: TumourGeometry) -> list[np.ndarray]:
    """Standardised smooth noise fields spanning the cube of half-side ``extent`` around the centre:
    core shape and edema shape (12^3, ~1/6 of the cube), enhancement patches (28^3, ~5 mm),
    calcification foci (48^3, ~2-3 mm)."""
    rng = np.random.default_rng(geom.noise_seed)
    out = []
    for n, sigma in ((12, 1.2), (12, 1.2), (28, 1.0), (48, 0.8)):
        f = ndi.gaussian_filter(rng.standard_normal((n, n, n)), sigma, mode="wrap")
        out.append(((f - f.mean()) / f.std()).astype(np.float32))
    return out


def _sample(field: np.ndarray, rel: np.ndarray, extent: float) -> np.ndarray:
    """Values of a cube-spanning ``field`` at points ``rel`` (3, ...) relative to the centre (mm)."""
    n = field.shape[0]
    coords = (rel + extent) * ((n - 1) / (2.0 * extent))
    return ndi.map_coordinates(field, coords, order=1, mode="nearest", output=np.float32)


def tumour_fractions(
    points: np.ndarray,
    geom: TumourGeometry,
    *,
    brain: np.ndarray,
    parenchyma: np.ndarray,
    voxel_mm: float,
) -> TumourFractions:
    """Tumour compartment fractions at template-mm ``points`` (3, ...).

    ``brain`` (0..1) and ``parenchyma`` (0..1, WM + 0.35 GM) are the (displaced)
    healthy maps at the points: the core is confined to the brain and the edema
    to the parenchyma. ``voxel_mm`` sets the smallest boundary width (partial volume).
    """
    rel = points - geom.centre.reshape(3, *([1] * (points.ndim - 1))).astype(np.float32)
    local = np.tensordot((geom.axes / geom.radii).T.astype(np.float32), rel, axes=1)  # in units of the radii
    rho0 = np.sqrt(np.sum(local * local, axis=0))
    f_core, f_edema, f_enh, f_calc = _noise_fields(geom)
    ext = geom.extent
    n_core, n_edema = (np.clip(_sample(f, rel, ext), -2.0, 2.0) for f in (f_core, f_edema))
    r_mean = float(np.mean(geom.radii))
    rho = rho0 * np.exp(geom.irregularity * n_core)
    width = max(geom.margin, 0.5 * voxel_mm) / 4.0  # logistic scale; 10-90 % transition ~ 4.4 * scale (mm)
    core = expit((1.0 - rho) * (r_mean / width)) * brain
    rho_e = rho0 * np.exp(_EDEMA_IRREGULARITY * n_edema) / geom.edema_scale
    edema_width = (max(geom.margin, 0.5 * voxel_mm) + 2.0) / 4.0
    edema = (1.0 - core) * expit((1.0 - rho_e) * (r_mean * geom.edema_scale / edema_width)) * parenchyma
    necrosis = (
        core * expit((geom.necrosis - rho) * (r_mean / max(1.0, 0.5 * voxel_mm) * 4.0))
        if geom.necrosis > 0.02
        else np.zeros_like(core)
    )
    viable = core - necrosis
    z_enh = float(ndtri(np.clip(geom.enhancement, 0.005, 0.995)))
    if geom.enhancement > 0.005:
        enhancing = viable * expit((z_enh - _sample(f_enh, rel, ext)) / 0.15)
    else:
        enhancing = np.zeros_like(core)
    net = viable - enhancing
    if geom.calcification > 0.01:
        z_cal = float(ndtri(1.0 - 0.1 * geom.calcification))
        calcification = net * expit((_sample(f_calc, rel, ext) - z_cal) / 0.15)
        net = net - calcification
    else:
        calcification = np.zeros_like(core)
    return TumourFractions(
        edema=edema, net=net, necrosis=necrosis, enhancing=enhancing, calcification=calcification, core=core, rho=rho
    )


def tumour_support(points: np.ndarray, geom: TumourGeometry) -> np.ndarray:
    """Boolean mask (shape of ``points[0]``) of the points the tumour, its edema or its mass effect can reach.

    Bound: :attr:`TumourGeometry.reach` plus 8 mm (the mass effect beyond is < 0.1 mm).
    """
    rel = points - geom.centre.reshape(3, *([1] * (points.ndim - 1))).astype(np.float32)
    local = np.tensordot((geom.axes / geom.radii).T.astype(np.float32), rel, axes=1)
    rho0 = np.sqrt(np.sum(local * local, axis=0))
    return rho0 < geom.reach + 8.0 / float(geom.radii.min())


def mass_effect_coords(points: np.ndarray, geom: TumourGeometry, depth: np.ndarray) -> np.ndarray:
    """Where the healthy tissue now at ``points`` (3, ..., template mm) came from.

    Incompressible radial expansion: tissue at distance ``r0`` from the centre
    moves to ``r = (r0^3 + R^3)^(1/3)``, R = ``geom.mass_effect``, faded out
    towards the brain surface by ``depth`` (mm below the brain surface at the points) so the skull stays put.
    """
    if geom.mass_effect <= 0.0:
        return points
    c = geom.centre.reshape(3, *([1] * (points.ndim - 1))).astype(np.float32)
    rel = points - c
    r = np.sqrt(np.sum(rel * rel, axis=0)) + np.float32(1e-3)
    fade = np.clip(depth / 12.0, 0.0, 1.0)
    r0 = np.cbrt(np.maximum(r**3 - fade * np.float32(geom.mass_effect**3), 0.0))
    return c + rel * (r0 / r)


def sample_head(head: HeadModel, points: np.ndarray, which: str) -> np.ndarray:
    """Healthy head map ``which`` (``brain``/``parenchyma`` as 0..1, ``depth`` in mm) at template-mm points."""
    if which == "depth":
        inv = np.linalg.inv(head.coarse_affine).astype(np.float32)
        src = head.depth
        scale = 1.0
    else:
        inv = np.linalg.inv(head.affine).astype(np.float32)
        src = getattr(head, which)
        scale = 1.0 / 255.0
    coords = np.tensordot(inv[:3, :3], points, axes=1) + inv[:3, 3].reshape(3, *([1] * (points.ndim - 1)))
    out = ndi.map_coordinates(src, coords, order=1, mode="constant", cval=0.0, output=np.float32)
    return out * np.float32(scale) if scale != 1.0 else out


def tumour_in_box(
    points: np.ndarray, geom: TumourGeometry, head: HeadModel, voxel_mm: float
) -> tuple[np.ndarray, TumourFractions]:
    """Displaced healthy-tissue coordinates (template mm, shape of ``points``) and tumour fractions at ``points``."""
    src = mass_effect_coords(points, geom, sample_head(head, points, "depth"))
    fr = tumour_fractions(
        points,
        geom,
        brain=sample_head(head, src, "brain"),
        parenchyma=np.clip(sample_head(head, src, "parenchyma") / 0.6, 0.0, 1.0),
        voxel_mm=voxel_mm,
    )
    return src, fr


def template_seg(geom: TumourGeometry, head: HeadModel, spacing: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Render only the tumour's BraTS labels on a template-space grid of ``spacing`` mm around it (cheap path).

    Returns ``(seg, affine)``: uint8 labels (X, Y, Z) and the voxel -> template-mm affine.
    """
    ext = geom.extent
    n = int(math.ceil(2.0 * ext / spacing)) + 1
    axis = np.arange(n, dtype=np.float32) * spacing - ext
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij")) + geom.centre.reshape(3, 1, 1, 1).astype(np.float32)
    _, fr = tumour_in_box(points, geom, head, voxel_mm=spacing)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = geom.centre - ext
    return fr.seg(), affine
