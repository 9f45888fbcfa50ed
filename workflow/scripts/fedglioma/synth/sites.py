"""Acquisition sites of the synthetic cohort: grid, orientation, scanner and label heterogeneity."""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np

from fedglioma.constants import ID_PATTERN
from fedglioma.errors import ConfigError
from fedglioma.synth.labels import GRADE_STYLES, LABEL_COLUMNS, check_prevalence

#: Output layouts the generator writes.
LAYOUTS: tuple[str, ...] = ("brats2021",)
#: Most subjects per site: subject numbers are ``(site_index + 1) * 1000 + i``.
MAX_SUBJECTS = 1000
#: Most sites: five-digit subject numbers.
MAX_SITES = 98


@dataclass(frozen=True)
class SiteSpec:
    """One synthetic acquisition site.

    Attributes:
        name: site ID (``SiteA``.., ``External``); also its folder name in a cohort.
        role: ``train`` or ``external``.
        voxel_size: (3,) mm along the voxel axes i, j, k (k = slice axis).
        fov_mm: (3,) field of view (mm) along i, j, k; ``shape = round(fov / voxel)``.
        orientation: NIfTI axis codes of the voxel axes, e.g. ``"LPS"`` (i towards left, j posterior, k superior).
        intensity_scale: global gain (stored WM T1 ~ 1000 * scale).
        modality_gain: (4,) relative gain of T1, T1c, T2, FLAIR.
        gamma: intensity non-linearity exponent applied before the gain.
        noise: Rician noise sigma relative to the WM T1 signal.
        bias_strength: amplitude (log scale) of the smooth multiplicative bias field.
        prevalence: label-prevalence overrides (keys of ``labels.DEFAULT_PREVALENCE``).
        missing_labels: clinical columns the site never records (``IDH``, ``1p19q``, ``MGMT``, ``grade``).
        missing_rate: probability that any one recorded clinical cell is missing anyway.
        seg_fraction: probability that a subject has a segmentation file (subject 0 always has one).
        grade_style: grade spelling, a key of ``labels.GRADE_STYLES``.
    """

    name: str
    role: str = "train"
    voxel_size: tuple[float, float, float] = (1.5, 1.5, 1.5)
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 180.0)
    orientation: str = "RAS"
    intensity_scale: float = 1.0
    modality_gain: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    gamma: float = 1.0
    noise: float = 0.03
    bias_strength: float = 0.2
    prevalence: dict[str, float] = field(default_factory=dict)
    missing_labels: tuple[str, ...] = ()
    missing_rate: float = 0.0
    seg_fraction: float = 1.0
    grade_style: str = "arabic"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Native voxel grid shape (I, J, K)."""
        return tuple(max(8, int(round(f / v))) for f, v in zip(self.fov_mm, self.voxel_size, strict=True))  # type: ignore[return-value]

    def base_affine(self) -> np.ndarray:
        """(4, 4) voxel -> scanner-RAS mm affine of the native grid, the grid centred on the isocentre."""
        ornt = nib.orientations.axcodes2ornt(tuple(self.orientation))
        affine = np.zeros((4, 4))
        for i, (axis, flip) in enumerate(ornt):
            affine[int(axis), i] = flip * self.voxel_size[i]
        centre = (np.array(self.shape, dtype=np.float64) - 1.0) / 2.0
        affine[:3, 3] = -affine[:3, :3] @ centre
        affine[3, 3] = 1.0
        return affine

    def validate(self) -> None:
        """Raise ConfigError on any unusable field."""
        where = f"site spec {self.name!r}"
        if not re.match(ID_PATTERN, self.name):
            raise ConfigError(f"{where}: name must match {ID_PATTERN}")
        if self.role not in ("train", "external"):
            raise ConfigError(f"{where}: role must be 'train' or 'external', got {self.role!r}")
        for key, vals, n in (
            ("voxel_size", self.voxel_size, 3),
            ("fov_mm", self.fov_mm, 3),
            ("modality_gain", self.modality_gain, 4),
        ):
            if len(vals) != n or not all(math.isfinite(v) and v > 0 for v in vals):
                raise ConfigError(f"{where}: {key} must be {n} positive numbers, got {vals!r}")
        if any(not 0.3 <= v <= 8.0 for v in self.voxel_size):
            raise ConfigError(f"{where}: voxel_size {self.voxel_size} outside 0.3..8 mm")
        try:
            ornt = nib.orientations.axcodes2ornt(tuple(self.orientation))
        except Exception as exc:
            raise ConfigError(f"{where}: orientation {self.orientation!r} is not a NIfTI axis code") from exc
        if len(self.orientation) != 3 or np.isnan(ornt).any() or len(set(ornt[:, 0])) != 3:
            raise ConfigError(f"{where}: orientation {self.orientation!r} must name each of R/L, A/P, S/I once")
        for key, v, lo, hi in (
            ("intensity_scale", self.intensity_scale, 0.05, 20.0),
            ("gamma", self.gamma, 0.3, 3.0),
            ("noise", self.noise, 0.0, 0.5),
            ("bias_strength", self.bias_strength, 0.0, 1.5),
            ("missing_rate", self.missing_rate, 0.0, 1.0),
            ("seg_fraction", self.seg_fraction, 0, 1),
        ):
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ConfigError(f"{where}: {key}={v!r} outside [{lo}, {hi}]")
        check_prevalence(self.prevalence, where=f"{where}: prevalence")
        bad = sorted(set(self.missing_labels) - set(LABEL_COLUMNS))
        if bad:
            raise ConfigError(f"{where}: missing_labels {bad} unknown; known: {list(LABEL_COLUMNS)}")
        if self.grade_style not in GRADE_STYLES:
            raise ConfigError(f"{where}: grade_style {self.grade_style!r} unknown; known: {sorted(GRADE_STYLES)}")


#: The six reference sites: five training sites and one external site with its own resolution
#: (thickest slices), orientation, scanner and grade spelling.
_BASE_SITES: tuple[dict, ...] = (
    dict(
        voxel_size=(1.5, 1.5, 1.5),
        orientation="RAS",
        intensity_scale=1.0,
        gamma=1.0,
        noise=0.022,
        bias_strength=0.15,
        modality_gain=(1.0, 1.1, 0.9, 0.8),
        prevalence={"idh_mutant": 0.35},
        grade_style="arabic",
    ),
    dict(
        voxel_size=(1.3, 1.3, 3.0),
        orientation="LPS",
        intensity_scale=2.4,
        gamma=0.9,
        noise=0.035,
        bias_strength=0.30,
        modality_gain=(0.8, 1.0, 1.3, 1.1),
        prevalence={"idh_mutant": 0.25},
        missing_labels=("MGMT",),
        grade_style="roman",
    ),
    dict(
        voxel_size=(1.4, 1.4, 2.0),
        orientation="LAS",
        intensity_scale=0.7,
        gamma=1.1,
        noise=0.026,
        bias_strength=0.20,
        modality_gain=(1.2, 1.2, 0.8, 1.0),
        prevalence={"idh_mutant": 0.45},
        seg_fraction=0.6,
        missing_rate=0.05,
        grade_style="who",
    ),
    dict(
        voxel_size=(1.2, 1.2, 4.0),
        orientation="RPS",
        intensity_scale=1.6,
        gamma=1.0,
        noise=0.045,
        bias_strength=0.35,
        modality_gain=(1.0, 0.9, 1.2, 1.3),
        prevalence={"idh_mutant": 0.30},
        missing_labels=("1p19q",),
        grade_style="arabic",
    ),
    dict(
        voxel_size=(1.5, 1.5, 2.5),
        orientation="LPI",
        intensity_scale=3.0,
        gamma=0.85,
        noise=0.03,
        bias_strength=0.25,
        modality_gain=(0.9, 1.0, 1.0, 0.9),
        prevalence={"idh_mutant": 0.40},
        missing_rate=0.05,
        grade_style="who_roman",
    ),
    dict(
        voxel_size=(1.25, 1.25, 5.0),
        orientation="PLS",
        intensity_scale=1.3,
        gamma=1.15,
        noise=0.04,
        bias_strength=0.30,
        modality_gain=(1.1, 1.0, 1.1, 1.2),
        prevalence={"idh_mutant": 0.35},
        grade_style="g",
    ),
)


def site_name(site_index: int, n_sites: int) -> str:
    """Default site name: ``SiteA``, ``SiteB``, ... for training sites; the last of >= 2 sites is ``External``."""
    if n_sites >= 2 and site_index == n_sites - 1:
        return "External"
    return f"Site{string.ascii_uppercase[site_index]}" if site_index < 26 else f"Site{site_index + 1:02d}"


def default_site_specs(n_sites: int, seed: int) -> list[SiteSpec]:
    """``n_sites`` sites: ``n_sites - 1`` training sites and an external one (a single site is a training site).

    Training sites cycle through five reference scanners; the external site is
    the sixth (1.25 x 1.25 x 5 mm, PLS, own gain, gamma and grade spelling).
    ``seed`` jitters gains, noise and bias by a few per cent, deterministically.
    """
    if isinstance(n_sites, bool) or not isinstance(n_sites, int | np.integer) or not 1 <= n_sites <= MAX_SITES:
        raise ConfigError(f"n_sites must be an integer in 1..{MAX_SITES}, got {n_sites!r}")
    check_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(9_999,)))
    specs = []
    for i in range(n_sites):
        external = n_sites >= 2 and i == n_sites - 1
        base = dict(_BASE_SITES[5 if external else i % 5])
        jitter = rng.uniform(0.94, 1.06, size=3)
        base["intensity_scale"] = round(base["intensity_scale"] * float(jitter[0]), 4)
        base["noise"] = round(base["noise"] * float(jitter[1]), 5)
        base["bias_strength"] = round(base["bias_strength"] * float(jitter[2]), 4)
        specs.append(SiteSpec(name=site_name(i, n_sites), role="external" if external else "train", **base))
    return specs


def subject_ids(site_index: int, n: int) -> list[str]:
    """BraTS 2021 IDs of a site's subjects: ``BraTS2021_{(site_index + 1) * 1000 + i:05d}``, i = 0..n-1.

    >>> subject_ids(0, 2)
    ['BraTS2021_01000', 'BraTS2021_01001']
    """
    check_counts(site_index, n)
    return [f"BraTS2021_{(site_index + 1) * 1000 + i:05d}" for i in range(n)]


def check_counts(site_index: int, n_subjects: int, n_sites: int | None = None) -> None:
    """Raise ConfigError unless the site index and subject count give valid, unique IDs."""
    for key, v in (("site_index", site_index), ("n_subjects", n_subjects)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
    if not 1 <= n_subjects < MAX_SUBJECTS:
        raise ConfigError(f"n_subjects must be in 1..{MAX_SUBJECTS - 1}, got {n_subjects}")
    upper = MAX_SITES if n_sites is None else n_sites
    if not 0 <= site_index < upper:
        raise ConfigError(f"site_index must be in 0..{upper - 1}, got {site_index}")


def check_seed(seed: int) -> None:
    """Raise ConfigError unless ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def with_overrides(spec: SiteSpec, **changes: object) -> SiteSpec:
    """A copy of ``spec`` with fields replaced (validated)."""
    out = replace(spec, **changes)  # type: ignore[arg-type]
    out.validate()
    return out
