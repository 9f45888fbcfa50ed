"""Sites of the synthetic cohort: the dataset each is written as (layout, IDs, space, state, clinical table),
its grids, scanner and label heterogeneity."""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field, replace

import numpy as np

from fedglioma.constants import ID_PATTERN, MODALITIES
from fedglioma.errors import ConfigError
from fedglioma.io.layouts import DEFAULT_TUMOUR_LABELS
from fedglioma.synth.labels import GRADE_STYLES, LABEL_COLUMNS, check_prevalence

#: Output layouts the generator writes (the readers of ``fedglioma.io.layouts`` find them).
LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "ucsf_pdgm", "upenn_gbm", "egd")
#: Spaces a site's images can be in: the scanner's (random head pose), or a template's (identity pose).
SPACES: tuple[str, ...] = ("native", "MNI152", "SRI24")
#: Subject-ID styles (``n`` = ``(site_index + 1) * 1000 + i + 1``) and the layouts whose folder names accept them.
ID_STYLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "brats2021": ("BraTS2021_{n:05d}", ("brats2021", "upenn_gbm", "egd")),
    "brats2023": ("BraTS-GLI-{n:05d}-000", ("brats2023", "upenn_gbm", "egd")),
    "ucsf_pdgm": ("UCSF-PDGM-{n:04d}", ("ucsf_pdgm", "upenn_gbm", "egd")),
    "upenn_gbm": ("UPENN-GBM-{n:05d}_11", ("upenn_gbm", "egd")),
    "egd": ("EGD-{n:04d}", ("upenn_gbm", "egd")),
    "hospital": ("HOSP-{n:05d}", ("upenn_gbm", "egd")),
}
#: Most subjects per site: subject numbers are ``(site_index + 1) * 1000 + i + 1``.
MAX_SUBJECTS = 1000
#: Most sites: five-digit subject numbers.
MAX_SITES = 98


@dataclass(frozen=True)
class GridSpec:
    """An acquisition grid: voxel size (mm) and field of view (mm) along the voxel axes i, j, k, and their
    NIfTI axis codes (``"LPS"``: i towards left, j posterior, k superior; k is the slice axis)."""

    voxel_size: tuple[float, float, float] = (1.5, 1.5, 1.5)
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 180.0)
    orientation: str = "RAS"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape (I, J, K): ``round(fov / voxel)``, at least 8."""
        return tuple(max(8, int(round(f / v))) for f, v in zip(self.fov_mm, self.voxel_size, strict=True))  # type: ignore[return-value]

    def affine(self) -> np.ndarray:
        """(4, 4) voxel -> scanner-RAS mm affine, the grid centred on the isocentre."""
        from nibabel.orientations import axcodes2ornt

        ornt = axcodes2ornt(tuple(self.orientation))
        affine = np.zeros((4, 4))
        for i, (axis, flip) in enumerate(ornt):
            affine[int(axis), i] = flip * self.voxel_size[i]
        centre = (np.array(self.shape, dtype=np.float64) - 1.0) / 2.0
        affine[:3, 3] = -affine[:3, :3] @ centre
        affine[3, 3] = 1.0
        return affine

    def validate(self, where: str) -> None:
        """Raise ConfigError on an unusable voxel size, field of view or orientation."""
        for key, vals in (("voxel_size", self.voxel_size), ("fov_mm", self.fov_mm)):
            if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
                raise ConfigError(f"{where}: {key} must be 3 positive numbers, got {vals!r}")
        if any(not 0.3 <= v <= 8.0 for v in self.voxel_size):
            raise ConfigError(f"{where}: voxel_size {self.voxel_size} outside 0.3..8 mm")
        try:
            from nibabel.orientations import axcodes2ornt

            ornt = axcodes2ornt(tuple(self.orientation))
        except Exception as exc:
            raise ConfigError(f"{where}: orientation {self.orientation!r} is not a NIfTI axis code") from exc
        if len(self.orientation) != 3 or np.isnan(ornt).any() or len(set(ornt[:, 0])) != 3:
            raise ConfigError(f"{where}: orientation {self.orientation!r} must name each of R/L, A/P, S/I once")


@dataclass(frozen=True)
class SiteSpec:
    """One synthetic acquisition site, written as one dataset.

    Attributes:
        name: site ID (``SiteA``.., ``External``); also its folder name in a cohort.
        role: ``train`` or ``external``.
        voxel_size, fov_mm, orientation: the native grid (``space="native"``): voxel size (mm) and field of
            view (mm) along the voxel axes i, j, k (k = slice axis), NIfTI axis codes; ``shape = round(fov /
            voxel)``. Unused in a template space (the template's grid).
        modality_grids: per-modality native grids (``GridSpec``) overriding the site grid, e.g. 2D sequences
            each with its own slice thickness, in-plane resolution, field of view and orientation; the
            segmentation and brain mask are on the T1c grid.
        layout: dataset layout written (:data:`LAYOUTS`): folder and file names, label values.
        id_style: subject-ID style (:data:`ID_STYLES`; default: the layout's).
        space: ``native`` (random head pose on the scanner grid), ``MNI152`` (identity pose on nilearn's
            MNI152 2009 grid, 197x233x189 1 mm) or ``SRI24`` (the MNI152 head moved into SRI24 space by
            the template-to-template affine, on the SRI24 240x240x155 1 mm grid).
        skull_stripped: background exactly 0 outside the (ground-truth) brain mask.
        acquired_slice_mm: (4,) slice thickness (mm) each modality was acquired with before resampling to a
            template grid (0 = isotropic); adds the slice profile along the template's z axis.
        sequence_motion: SD (degrees and mm) of the head motion between sequences (T1, T2, FLAIR vs. T1c).
        cavity_fraction: probability that a subject has a resection cavity (BraTS 2024 label 4, not tumour;
            layout ``brats2023`` only).
        clinical_style: clinical-table style (``fedglioma.synth.clinical.STYLES``).
        intensity_scale: global gain (stored WM T1 ~ 1000 * scale).
        modality_gain: (4,) relative gain of T1, T1c, T2, FLAIR.
        gamma: intensity non-linearity exponent applied before the gain.
        noise: Rician noise sigma relative to the WM T1 signal.
        bias_strength: amplitude (log scale) of the smooth multiplicative bias field.
        prevalence: label-prevalence overrides (keys of ``labels.DEFAULT_PREVALENCE``).
        missing_labels: clinical labels the site never records (``IDH``, ``1p19q``, ``MGMT``, ``grade``).
        missing_rate: probability that any one recorded clinical cell is missing anyway.
        seg_fraction: probability that a subject has a segmentation file (subject 0 always has one).
        grade_style: grade spelling, a key of ``labels.GRADE_STYLES``.
    """

    name: str
    role: str = "train"
    voxel_size: tuple[float, float, float] = (1.5, 1.5, 1.5)
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 180.0)
    orientation: str = "RAS"
    modality_grids: dict[str, GridSpec] = field(default_factory=dict)
    layout: str = "brats2021"
    id_style: str | None = None
    space: str = "native"
    skull_stripped: bool = False
    acquired_slice_mm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    sequence_motion: float = 0.0
    cavity_fraction: float = 0.0
    clinical_style: str = "plain"
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
    def ids(self) -> str:
        """The subject-ID style (``id_style``, default the layout's)."""
        return self.id_style or self.layout

    def grid_spec(self, modality: str | None = None) -> GridSpec:
        """The native grid of ``modality`` (its own in ``modality_grids``, else the site's)."""
        if modality is not None and modality in self.modality_grids:
            return self.modality_grids[modality]
        return GridSpec(self.voxel_size, self.fov_mm, self.orientation)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Native voxel grid shape (I, J, K) of the site grid."""
        return self.grid_spec().shape

    def base_affine(self) -> np.ndarray:
        """(4, 4) voxel -> scanner-RAS mm affine of the site grid, centred on the isocentre."""
        return self.grid_spec().affine()

    def validate(self) -> None:
        """Raise ConfigError on any unusable field."""
        where = f"site spec {self.name!r}"
        if not re.match(ID_PATTERN, self.name):
            raise ConfigError(f"{where}: name must match {ID_PATTERN}")
        if self.role not in ("train", "external"):
            raise ConfigError(f"{where}: role must be 'train' or 'external', got {self.role!r}")
        self.grid_spec().validate(where)
        for m, g in self.modality_grids.items():
            if m not in MODALITIES:
                raise ConfigError(f"{where}: modality_grids key {m!r} is not one of {list(MODALITIES)}")
            if not isinstance(g, GridSpec):
                raise ConfigError(f"{where}: modality_grids[{m!r}] must be a GridSpec")
            g.validate(f"{where}, {m} grid")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"{where}: unknown output layout {self.layout!r}: the generator writes {', '.join(LAYOUTS)}")
        if self.ids not in ID_STYLES:
            raise ConfigError(f"{where}: unknown id_style {self.ids!r}; known: {sorted(ID_STYLES)}")
        if self.layout not in ID_STYLES[self.ids][1]:
            raise ConfigError(f"{where}: {self.ids} subject IDs do not fit the {self.layout} layout's folder names")
        if self.space not in SPACES:
            raise ConfigError(f"{where}: space {self.space!r} unknown; known: {list(SPACES)}")
        if self.space != "native" and self.modality_grids:
            raise ConfigError(f"{where}: modality_grids need space 'native' (a template space has one grid)")
        if len(self.modality_gain) != 4 or not all(math.isfinite(v) and v > 0 for v in self.modality_gain):
            raise ConfigError(f"{where}: modality_gain must be 4 positive numbers, got {self.modality_gain!r}")
        if len(self.acquired_slice_mm) != 4 or not all(math.isfinite(v) and 0 <= v <= 8 for v in self.acquired_slice_mm):
            raise ConfigError(f"{where}: acquired_slice_mm must be 4 numbers in 0..8, got {self.acquired_slice_mm!r}")
        for key, v, lo, hi in (
            ("intensity_scale", self.intensity_scale, 0.05, 20.0),
            ("gamma", self.gamma, 0.3, 3.0),
            ("noise", self.noise, 0.0, 0.5),
            ("bias_strength", self.bias_strength, 0.0, 1.5),
            ("missing_rate", self.missing_rate, 0.0, 1.0),
            ("seg_fraction", self.seg_fraction, 0, 1),
            ("sequence_motion", self.sequence_motion, 0.0, 5.0),
            ("cavity_fraction", self.cavity_fraction, 0.0, 1.0),
        ):
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ConfigError(f"{where}: {key}={v!r} outside [{lo}, {hi}]")
        if self.cavity_fraction > 0 and self.layout != "brats2023":
            raise ConfigError(f"{where}: resection cavities (cavity_fraction) need the brats2023 layout (label 4)")
        check_prevalence(self.prevalence, where=f"{where}: prevalence")
        bad = sorted(set(self.missing_labels) - set(LABEL_COLUMNS))
        if bad:
            raise ConfigError(f"{where}: missing_labels {bad} unknown; known: {list(LABEL_COLUMNS)}")
        if self.grade_style not in GRADE_STYLES:
            raise ConfigError(f"{where}: grade_style {self.grade_style!r} unknown; known: {sorted(GRADE_STYLES)}")
        from fedglioma.synth.clinical import STYLES  # light; avoids an import cycle

        if self.clinical_style not in STYLES:
            raise ConfigError(f"{where}: clinical_style {self.clinical_style!r} unknown; known: {sorted(STYLES)}")


#: The external site's four 2D axial sequences, each on its own grid (in-plane 0.45-1 mm, 5-6 mm slices).
_EXTERNAL_GRIDS: dict[str, GridSpec] = {
    "T1": GridSpec((0.9, 0.9, 5.5), (230.0, 230.0, 154.0), "LPS"),
    "T1c": GridSpec((1.0, 1.0, 5.0), (240.0, 240.0, 150.0), "RPS"),
    "T2": GridSpec((0.47, 0.47, 5.0), (200.0, 235.0, 150.0), "LAS"),
    "FLAIR": GridSpec((0.94, 0.94, 6.0), (220.0, 240.0, 156.0), "PLI"),
}

#: The six reference sites: five training sites, each a public dataset as it is distributed (skull-stripped,
#: co-registered, mostly in a template space), and one external site as a raw hospital export.
_BASE_SITES: tuple[dict, ...] = (
    dict(  # BraTS 2021: SRI24, skull-stripped, labels 1/2/4
        layout="brats2021",
        space="SRI24",
        skull_stripped=True,
        voxel_size=(1.0, 1.0, 1.0),
        fov_mm=(240.0, 240.0, 155.0),
        orientation="LPS",
        acquired_slice_mm=(0.0, 0.0, 3.0, 3.0),
        clinical_style="brats2021",
        intensity_scale=1.0,
        gamma=1.0,
        noise=0.022,
        bias_strength=0.15,
        modality_gain=(1.0, 1.1, 0.9, 0.8),
        prevalence={"idh_mutant": 0.35},
        grade_style="arabic",
    ),
    dict(  # BraTS 2023 glioma: SRI24, skull-stripped, labels 1/2/3 (+ 2024-style label 4 resection cavity)
        layout="brats2023",
        space="SRI24",
        skull_stripped=True,
        voxel_size=(1.0, 1.0, 1.0),
        fov_mm=(240.0, 240.0, 155.0),
        orientation="LPS",
        acquired_slice_mm=(3.0, 0.0, 4.0, 4.0),
        cavity_fraction=0.35,
        clinical_style="brats2023",
        intensity_scale=2.4,
        gamma=0.9,
        noise=0.035,
        bias_strength=0.30,
        modality_gain=(0.8, 1.0, 1.3, 1.1),
        prevalence={"idh_mutant": 0.25},
        missing_labels=("MGMT",),
        grade_style="cns_who",
    ),
    dict(  # UCSF-PDGM: skull-stripped, co-registered, own 1 mm grid
        layout="ucsf_pdgm",
        space="native",
        skull_stripped=True,
        voxel_size=(1.0, 1.0, 1.0),
        fov_mm=(240.0, 240.0, 160.0),
        orientation="LPS",
        clinical_style="ucsf_pdgm",
        intensity_scale=0.7,
        gamma=1.1,
        noise=0.026,
        bias_strength=0.20,
        modality_gain=(1.2, 1.2, 0.8, 1.0),
        prevalence={"idh_mutant": 0.45},
        missing_rate=0.05,
        grade_style="arabic",
    ),
    dict(  # UPENN-GBM: SRI24, skull-stripped, labels 1/2/4, segmentations for some subjects
        layout="upenn_gbm",
        space="SRI24",
        skull_stripped=True,
        voxel_size=(1.0, 1.0, 1.0),
        fov_mm=(240.0, 240.0, 155.0),
        orientation="LPS",
        acquired_slice_mm=(0.0, 0.0, 3.0, 3.0),
        clinical_style="upenn_gbm",
        intensity_scale=1.6,
        gamma=1.0,
        noise=0.045,
        bias_strength=0.35,
        modality_gain=(1.0, 0.9, 1.2, 1.3),
        prevalence={"idh_mutant": 0.30},
        missing_labels=("1p19q", "grade"),
        missing_rate=0.1,
        seg_fraction=0.6,
        grade_style="arabic",
    ),
    dict(  # EGD: MNI152 (nilearn 2009 grid), skull-stripped, binary mask
        layout="egd",
        space="MNI152",
        skull_stripped=True,
        voxel_size=(1.0, 1.0, 1.0),
        fov_mm=(197.0, 233.0, 189.0),
        orientation="RAS",
        acquired_slice_mm=(0.0, 0.0, 4.0, 5.0),
        clinical_style="egd",
        intensity_scale=3.0,
        gamma=0.85,
        noise=0.03,
        bias_strength=0.25,
        modality_gain=(0.9, 1.0, 1.0, 0.9),
        prevalence={"idh_mutant": 0.40},
        missing_rate=0.05,
        grade_style="roman",
    ),
    dict(  # raw hospital export: skull on, 2D axial sequences each on its own grid, head motion between them
        layout="upenn_gbm",
        id_style="hospital",
        space="native",
        skull_stripped=False,
        voxel_size=(1.0, 1.0, 5.0),
        fov_mm=(240.0, 240.0, 150.0),
        orientation="RPS",
        modality_grids=_EXTERNAL_GRIDS,
        sequence_motion=1.5,
        clinical_style="hospital",
        intensity_scale=1.3,
        gamma=1.15,
        noise=0.04,
        bias_strength=0.30,
        modality_gain=(1.1, 1.0, 1.1, 1.2),
        prevalence={"idh_mutant": 0.45, "codeleted_if_mutant": 0.5},
        grade_style="who_roman",
    ),
)


def site_name(site_index: int, n_sites: int) -> str:
    """Default site name: ``SiteA``, ``SiteB``, ... for training sites; the last of >= 2 sites is ``External``."""
    if n_sites >= 2 and site_index == n_sites - 1:
        return "External"
    return f"Site{string.ascii_uppercase[site_index]}" if site_index < 26 else f"Site{site_index + 1:02d}"


def default_site_specs(n_sites: int, seed: int) -> list[SiteSpec]:
    """``n_sites`` sites: ``n_sites - 1`` training sites and an external one (a single site is a training site).

    Training sites cycle through five reference datasets (BraTS 2021, BraTS 2023, UCSF-PDGM, UPENN-GBM,
    EGD); the external site is the sixth (a raw hospital export). ``seed`` jitters gains, noise and bias by
    a few per cent, deterministically; layouts, spaces and grids do not depend on it.
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


def subject_ids(site_index: int, n: int, style: str = "brats2021") -> list[str]:
    """IDs of a site's subjects in an ID style (:data:`ID_STYLES`), number ``(site_index + 1) * 1000 + i + 1``
    (1-based, as the public datasets count).

    Unique across the sites of a cohort (the site index is part of the number) and known before any file
    exists.

    >>> subject_ids(0, 2)
    ['BraTS2021_01001', 'BraTS2021_01002']
    >>> subject_ids(2, 1, "ucsf_pdgm"), subject_ids(1, 1, "brats2023")
    (['UCSF-PDGM-3001'], ['BraTS-GLI-02001-000'])
    """
    check_counts(site_index, n)
    if style not in ID_STYLES:
        raise ConfigError(f"unknown subject-ID style {style!r}; known: {sorted(ID_STYLES)}")
    pattern = ID_STYLES[style][0]
    return [pattern.format(n=(site_index + 1) * 1000 + i + 1) for i in range(n)]


def site_subject_ids(spec: SiteSpec, site_index: int, n: int) -> list[str]:
    """The IDs of ``spec``'s subjects (its ID style)."""
    return subject_ids(site_index, n, spec.ids)


def demo_clinical_mapping(spec: SiteSpec) -> dict:
    """The ``clinical.sites.<site>`` entry of ``config.yaml`` that harmonises the site's clinical table."""
    import copy

    from fedglioma.synth.clinical import STYLES

    return copy.deepcopy(STYLES[spec.clinical_style].mapping)


def demo_site_row(spec: SiteSpec, site: str, out: str) -> dict[str, str]:
    """The ``sites.tsv`` columns a generated site must have (layout, path, clinical, tumour_labels,
    skull_stripped, coregistered, space), the site folder being ``out/site``."""
    from fedglioma.synth.clinical import STYLES

    preprocessed = spec.skull_stripped or spec.space != "native"
    return {
        "layout": spec.layout,
        "path": f"{out}/{site}",
        "clinical": f"{out}/{site}/{STYLES[spec.clinical_style].filename}",
        "tumour_labels": ",".join(str(v) for v in DEFAULT_TUMOUR_LABELS[spec.layout]),
        "skull_stripped": "yes" if spec.skull_stripped else "no",
        "coregistered": "yes" if preprocessed and not spec.modality_grids and not spec.sequence_motion else "no",
        "space": spec.space,
    }


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


def with_layout(spec: SiteSpec, layout: str) -> SiteSpec:
    """``spec`` written in another layout: the ID style becomes the layout's where the old one does not fit
    its folder names, and resection cavities are dropped unless the layout has a label for them."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown output layout {layout!r}: the generator writes only {', '.join(LAYOUTS)}")
    ids = spec.ids if layout in ID_STYLES.get(spec.ids, ("", ()))[1] else layout
    return with_overrides(spec, layout=layout, id_style=ids,
                          cavity_fraction=spec.cavity_fraction if layout == "brats2023" else 0.0)


def with_overrides(spec: SiteSpec, **changes: object) -> SiteSpec:
    """A copy of ``spec`` with fields replaced (validated)."""
    out = replace(spec, **changes)  # type: ignore[arg-type]
    out.validate()
    return out
