"""The configuration, defined once: every section of ``config.yaml`` with its keys, defaults, ranges and meaning.

Each section is a pydantic model that refuses unknown keys (``extra="forbid"``) and checks types strictly, so a
typo anywhere fails with the key's path (``config/config.yaml: preprocess.n4.shrink_factr: extra inputs are not
permitted``). Everything that reads the configuration goes through these models: the workflow
(``workflow/rules/common.smk`` validates Snakemake's merged ``config`` with :func:`validate_config` before any
job, and the rules pass on the fully defaulted sections), the subcommands' ``--config`` (:func:`load_config`),
and the preprocessing steps' keyword parameters (:func:`section_params`).

``schemas/config.schema.yaml`` (JSON schema, for editors and other tools) and the key table of
``config/README.md`` are generated from :class:`Config`: ``python -m fedglioma.settings`` rewrites both, and
``tests/unit/test_settings.py`` checks that they are current.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationError,
    field_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fedglioma.constants import MAX_IMAGE_MB, MODALITIES
from fedglioma.errors import ConfigError

#: Where the subcommands read the configuration unless ``--config`` says otherwise.
DEFAULT_CONFIG = Path("config/config.yaml")
#: The generated JSON schema of :class:`Config` (package data; ``python -m fedglioma.settings`` rewrites it).
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"

Modality = Literal["T1", "T1c", "T2", "FLAIR"]
Number = int | float
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every section: unknown keys are errors, types are checked strictly, values are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _from_bool(field: str) -> Any:
    """Before-validator: ``true``/``false`` stands for ``{field: true/false}``."""

    def convert(value: Any) -> Any:
        return {field: value} if isinstance(value, bool) else value

    return convert


def _from_name(value: Any) -> Any:
    """Before-validator: a bare name stands for ``{name: <name>}``."""
    return {"name": value} if isinstance(value, str) else value


# ---- synthetic demo cohort, inputs, layouts ----------------------------------------------------------------------
class PhenotypeStrengths(Section):
    """How label-specific each phenotype of the synthetic tumours is (0 = independent of the label, 1 = fully
    label-specific; fedglioma.synth.tumour, docs/synth.md)."""

    idh: Fraction = Field(0.45, description="IDH-mutant tumours lie frontally, enhance little and, when "
                          "1p/19q-intact, show the T2-FLAIR mismatch sign.")
    codeletion: Fraction = Field(0.5, description="Codeleted tumours are cortical, with calcification-like dark "
                                 "foci and ill-defined margins.")
    grade: Fraction = Field(0.3, description="Grade 4: larger tumours with necrosis, ring enhancement and larger "
                            "edema; grade 2 small, non-enhancing, little edema.")
    mgmt: Fraction = Field(0.3, description="A weak signal: methylated tumours have somewhat less edema and "
                           "enhancement.")
    mass_effect: Fraction = Field(0.6, description="How much the tumour pushes the surrounding brain away "
                                  "(0 = none).")


class DemoConfig(Section):
    """Built-in synthetic demo cohort."""

    enabled: bool = Field(False, description="Generate the sites of sites.tsv with the synth_site rule instead of "
                          "reading existing data.")
    out: str = Field("results/demo", description="Folder the generated sites are written to (site folders are "
                     "<out>/<site>).")
    subjects_per_site: int = Field(6, ge=1, description="Subjects generated per training site.")
    external_subjects: int = Field(8, ge=1, description="Subjects generated for the external site.")
    seed: int = Field(2025, description="Generator seed.")
    strengths: PhenotypeStrengths = Field(default_factory=PhenotypeStrengths,
                                          description="Phenotype strength of each marker; see docs/synth.md.")


class InputsConfig(Section):
    """Handling of input-contract problems."""

    on_problem: Literal["error", "skip"] = Field(
        "error", description="`error` stops before any job runs and lists every problem; `skip` leaves the subject "
        "out with a warning.")
    max_image_mb: PositiveFloat = Field(
        MAX_IMAGE_MB, description="Largest image (MiB of voxel data, shape x data type from the NIfTI header) that "
        "is loaded; a larger one is refused from its header, before its data are read.")


class NnunetLayoutConfig(Section):
    """nnU-Net raw-dataset layout."""

    channels: list[Modality] = Field(["T1", "T1c", "T2", "FLAIR"], min_length=4, max_length=4,
                                     json_schema_extra={"uniqueItems": True},
                                     description="Modality of each channel _0000.._0003.")

    @model_validator(mode="after")
    def _distinct(self) -> NnunetLayoutConfig:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must name four different modalities, got {self.channels}")
        return self


class LayoutsConfig(Section):
    """Options of the site layouts."""

    nnunet: NnunetLayoutConfig = Field(default_factory=NnunetLayoutConfig, description="nnU-Net raw-dataset layout.")


# ---- clinical tables ------------------------------------------------------------------------------------------
class ClinicalColumns(Section):
    """Column name of each target; an empty name means the target is missing at the site."""

    idh: str = Field("IDH", description="IDH mutation status column.")
    codeletion: str = Field("1p19q", description="1p/19q codeletion status column.")
    mgmt: str = Field("MGMT", description="MGMT promoter methylation column.")
    grade: str = Field("grade", description="WHO grade column.")


class ClinicalValues(Section):
    """Extra spellings per target: a site's value -> a known spelling (``""`` = missing)."""

    idh: dict[str, str] = Field(default_factory=dict, description="Extra IDH spellings.")
    codeletion: dict[str, str] = Field(default_factory=dict, description="Extra 1p/19q spellings.")
    mgmt: dict[str, str] = Field(default_factory=dict, description="Extra MGMT spellings.")
    grade: dict[str, str] = Field(default_factory=dict, description="Extra grade spellings.")


class ClinicalThresholds(Section):
    """Cut-off of a numeric column per binary target: a number >= the cut-off is 1, below it 0."""

    idh: float | None = Field(None, description="Cut-off of a numeric IDH column.")
    codeletion: float | None = Field(None, description="Cut-off of a numeric 1p/19q column.")
    mgmt: float | None = Field(None, description="Cut-off of a numeric MGMT column (methylation %, CpG index, ...).")


class ClinicalMapping(Section):
    """How one site's clinical table maps to the targets."""

    id_column: str = Field("subject", description="Column holding the subject ID (as in the image folder names).")
    columns: ClinicalColumns = Field(default_factory=ClinicalColumns,
                                     description="Column name of each target (idh, codeletion, mgmt, grade).")
    values: ClinicalValues = Field(
        default_factory=ClinicalValues,
        description="Extra spellings per target, mapping a site value to a known spelling (e.g. idh: {mut: mutant}).")
    thresholds: ClinicalThresholds = Field(
        default_factory=ClinicalThresholds,
        description="Cut-off of a numeric column per binary target (e.g. mgmt: 10 for a methylation percentage): a "
        "number >= the cut-off is 1 (mutant / codeleted / methylated), below it 0; text cells still go through the "
        "spellings.")


class ClinicalConfig(Section):
    """Mapping of clinical tables to the targets (``default``, then per-site overrides)."""

    default: ClinicalMapping = Field(default_factory=ClinicalMapping, description="Mapping of every site.")
    sites: dict[str, ClinicalMapping] = Field(
        default_factory=dict,
        description="Per-site overrides keyed by site ID: the keys given replace those of `default` (columns and "
        "thresholds one by one; values add spellings).")

    @field_serializer("sites")
    def _only_overrides(self, sites: dict[str, ClinicalMapping]) -> dict[str, dict[str, Any]]:
        """An override dumps only the keys it sets, so that it still overrides only those when read back."""
        return {site: m.model_dump(mode="json", exclude_unset=True) for site, m in sites.items()}

    def for_site(self, site: str) -> ClinicalMapping:
        """The mapping of ``site``: ``default`` with the keys that ``sites.<site>`` sets replaced."""
        over = self.sites.get(site)
        if over is None:
            return self.default
        merged = self.default.model_dump()
        given = over.model_dump(exclude_unset=True)
        merged["id_column"] = given.get("id_column", merged["id_column"])
        for key in ("columns", "thresholds"):
            merged[key].update(given.get(key, {}))
        for task, extra in given.get("values", {}).items():
            merged["values"][task].update(extra)
        return ClinicalMapping.model_validate(merged)


# ---- preprocessing --------------------------------------------------------------------------------------------
class ImportParams(Section):
    """Keyword parameters of the import step (:func:`fedglioma.preprocess.importing.import_subject`; not a
    config.yaml section: the workflow uses these defaults)."""

    fov_max_extent_diff: float = Field(0.5, ge=0, description="Largest relative difference of the sequences' "
                                       "field-of-view extents.")
    fov_max_centre_mm: float = Field(50.0, ge=0, description="Largest distance (mm) of the sequences' field-of-view "
                                     "centres.")


class _Registration(Section):
    """The multi-resolution schedule shared by the registrations (fedglioma.preprocess.registration.schedule)."""

    working_resolution_mm: PositiveFloat | None = Field(
        2.0, description="Both images are resampled to this spacing (mm) for the registration (null: as they are).")
    shrink: list[Annotated[int, Field(ge=1)]] = Field([4, 2], description="Shrink factor of each level.")
    smoothing: list[Annotated[Number, Field(ge=0)]] = Field([2, 1], description="Smoothing sigma (voxels) of each "
                                                            "level.")
    iterations: list[Annotated[int, Field(ge=0)]] = Field([100, 50], description="Iterations of each level.")
    sampling: int = Field(32, ge=1, description="Histogram bins of the mutual information.")
    sampling_rate: float = Field(0.2, gt=0, le=1, description="Fraction of voxels sampled for the metric.")


class CoregisterConfig(_Registration):
    """Rigid co-registration of T1, T2 and FLAIR to T1c."""

    skip: bool = Field(False, description="Skip the registration (sequences only resampled onto the T1c grid by "
                       "their headers).")
    transform: Literal["Rigid", "QuickRigid", "DenseRigid", "Affine", "AffineFast", "Similarity"] = Field(
        "Rigid", description="ANTs transform type.")
    interpolator: Literal["linear", "bSpline", "lanczosWindowedSinc", "nearestNeighbor"] = Field(
        "linear", description="Interpolation of the moved sequences.")
    init: Literal["identity", "com"] = Field("identity", description="Initial transform: identity (same session) or "
                                             "com (centres of mass).")
    seed: int = Field(1, description="Seed of the metric sampling.")


class SkullstripConfig(Section):
    """Skull stripping (method hdbet or atlas)."""

    method: Literal["hdbet", "atlas"] = Field(
        "hdbet", description="hdbet, or atlas: a cheap template-based mask (explicit choice, never a fallback).")
    modality: Modality = Field("T1c", description="Modality the brain mask is computed on.")
    mode: Literal["fast", "accurate"] = Field("fast", description="HD-BET with one fold (fast) or five (accurate).")
    tta: bool = Field(False, description="HD-BET test-time augmentation (mirroring).")
    postprocess: bool = Field(True, description="HD-BET post-processing: keep the largest connected component.")
    device: str | int = Field("auto", description="auto (CUDA when present), cpu, or a CUDA device index.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="HD-BET network precision: auto = bf16 where the processor (AVX512-BF16/AMX) or GPU runs "
        "it natively, else fp32.")
    runtime: Literal["torch", "openvino"] = Field(
        "torch", description="HD-BET network runtime: torch, or openvino (CPU only, needs the openvino package; about "
        "1.5x faster per call than torch bf16 on an Intel Xeon with AMX, same mask to Dice >= 0.999; each fold is "
        "converted once and cached in runtime_cache_dir).")
    runtime_cache_dir: str | None = Field(
        None, description="Folder of the converted HD-BET networks of runtime openvino (named by the weights' sha256 "
        "and the openvino and torch versions; safe to share between jobs); null: $XDG_CACHE_HOME/fedglioma/hdbet.")
    crop_margin_mm: float | None = Field(10.0, ge=0, description="HD-BET sees only the head's bounding box plus this "
                                         "margin (mm; null: the whole image).")
    atlas_dilate_mm: float = Field(2.0, ge=0, description="Atlas method: dilation (mm) of the registered template "
                                   "brain mask.")
    background_tolerance: float = Field(1e-3, ge=0, description="Sites declared skull_stripped: intensity up to "
                                        "which a voxel counts as background.")


class AtlasConfig(_Registration):
    """Registration to the brain template."""

    template: Literal["MNI152", "SRI24"] = Field(
        "MNI152", description="Template (MNI152 from nilearn; SRI24 when a package provides it).")
    template_path: str | None = Field(None, description="Template T1 brain file instead of the packaged one.")
    template_mask_path: str | None = Field(None, description="Template brain mask file (with template_path).")
    resolution_mm: PositiveFloat = Field(
        1.0, description="Spacing (mm) of the template space every later step works in (N4, normalisation, QC, "
        "network grid); 1 = the template's own grid.")
    type_of_transform: str = Field("Affine", description="ANTs transform type: Affine, Rigid, SyN, ...")
    use_template_mask: bool = Field(True, description="Restrict the metric to the template brain mask.")
    shrink: list[Annotated[int, Field(ge=1)]] = Field([4, 2, 1], description="Shrink factor of each level.")
    smoothing: list[Annotated[Number, Field(ge=0)]] = Field([2, 1, 0], description="Smoothing sigma (voxels) of "
                                                            "each level.")
    iterations: list[Annotated[int, Field(ge=0)]] = Field([100, 50, 25], description="Iterations of each level.")
    syn_iterations: list[Annotated[int, Field(ge=0)]] = Field([40, 20, 0], description="Iterations of each level "
                                                              "of a deformable (SyN) stage.")
    interpolator: str = Field("linear", description="ANTs interpolation of the moved images (masks use "
                              "genericLabel).")
    seed: int = Field(1, description="Seed of the metric sampling.")


class N4Config(Section):
    """N4 bias-field correction inside the brain mask."""

    skip: bool = Field(False, description="Copy the images unchanged.")
    shrink_factor: int = Field(6, ge=1, description="Shrink factor of the image N4 fits on.")
    iterations: list[Annotated[int, Field(ge=1)]] = Field([50, 50, 25], description="Iterations of each fitting "
                                                          "level.")
    tolerance: float = Field(1e-6, gt=0, description="Convergence threshold.")
    spline_param: Number | list[Number] | None = Field(None, description="B-spline mesh size (null: ANTs' "
                                                       "default).")


class ZScoreConfig(Section):
    """Clip to percentiles of the brain voxels, then z-score inside the brain."""

    method: Literal["zscore"] = Field("zscore", description="Normaliser: zscore (option clip) or percentile (option "
                                      "percentiles).")
    clip: Annotated[list[Annotated[float, Field(ge=0, le=100)]], Field(min_length=2, max_length=2)] | None = Field(
        [0.5, 99.5], description="Percentiles clipped to before the z-score (null: no clipping).")


class PercentileConfig(Section):
    """Map two percentiles of the brain voxels to 0 and 1 (clipped)."""

    method: Literal["percentile"] = Field(description="Normaliser.")
    percentiles: Annotated[list[Annotated[float, Field(ge=0, le=100)]], Field(min_length=2, max_length=2)] = Field(
        [0.5, 99.5], description="Percentiles mapped to 0 and 1.")


def _normaliser(value: Any) -> str:
    """The normaliser a ``normalise`` section names (zscore when it names none)."""
    if isinstance(value, Mapping):
        return str(value.get("method", "zscore"))
    return str(getattr(value, "method", "zscore"))


#: The ``normalise`` section: one normaliser and its options, chosen by ``method``.
NormaliseConfig = Annotated[
    Annotated[ZScoreConfig, Tag("zscore")] | Annotated[PercentileConfig, Tag("percentile")],
    Discriminator(_normaliser, custom_error_type="normaliser",
                  custom_error_message="method must be zscore or percentile"),
]


class NormaliseSection(RootModel[NormaliseConfig]):
    """The ``normalise`` section as a model of its own (its value is :attr:`root`)."""

    model_config = ConfigDict(strict=True, frozen=True)


class GridConfig(Section):
    """The network grid."""

    grid_spacing: PositiveFloat | Annotated[list[PositiveFloat], Field(min_length=3, max_length=3)] = Field(
        3.0, description="Voxel spacing in mm (one number or three).")
    grid_shape: Annotated[int, Field(ge=8)] | Annotated[list[Annotated[int, Field(ge=8)]],
                                                        Field(min_length=3, max_length=3)] = Field(
        [48, 64, 48], description="Grid shape in voxels (one number or three).")
    antialias: bool = Field(True, description="Smooth before down-sampling to the grid.")


class TemplateTransformParams(Section):
    """Registration of one public template onto another (rule template_transform; not a config.yaml section)."""

    type_of_transform: str = Field("Affine", description="ANTs transform type (linear).")
    working_resolution_mm: float = Field(2.0, gt=0, description="Working spacing (mm).")
    shrink: list[int] = Field([4, 2, 1], description="Shrink factor of each level.")
    smoothing: list[Number] = Field([2, 1, 0], description="Smoothing sigma of each level.")
    iterations: list[int] = Field([200, 100, 50], description="Iterations of each level.")
    sampling: int = Field(32, ge=1, description="Histogram bins of the mutual information.")
    sampling_rate: float = Field(0.25, gt=0, le=1, description="Fraction of voxels sampled for the metric.")
    seed: int = Field(1, description="Seed of the metric sampling.")


class PreprocessConfig(Section):
    """Per-site preprocessing steps; each key holds the parameters of one step (docs/preprocessing.md)."""

    coregister: CoregisterConfig = Field(default_factory=CoregisterConfig, description="Rigid co-registration of "
                                         "T1, T2 and FLAIR to T1c.")
    skullstrip: SkullstripConfig = Field(default_factory=SkullstripConfig, description="Skull stripping.")
    atlas: AtlasConfig = Field(default_factory=AtlasConfig, description="Registration to the brain template.")
    n4: N4Config = Field(default_factory=N4Config, description="N4 bias-field correction inside the brain mask.")
    normalise: NormaliseConfig = Field(default_factory=ZScoreConfig, description="Intensity normalisation: method "
                                       "(zscore or percentile) and its options.")
    grid: GridConfig = Field(default_factory=GridConfig, description="The network grid.")


# ---- QC -------------------------------------------------------------------------------------------------------
class QcThresholds(Section):
    """Flag thresholds (calibration in docs/preprocessing.md)."""

    brain_ml_min: float = Field(900.0, description="Smallest plausible brain volume (mL).")
    brain_ml_max: float = Field(2200.0, description="Largest plausible brain volume (mL): a mask that keeps skull or "
                                "scalp is far above it.")
    min_template_dice: Fraction = Field(0.8, description="Lowest Dice of the subject's template-space brain mask "
                                        "with the template brain mask (catches partial and empty brain masks).")
    min_ventricle_contrast: float = Field(
        0.95, description="Lowest template-space T1c contrast between the template's grey matter and its ventricles "
        "(median difference in units of the T1c's interquartile range in the brain; catches registration errors).")
    min_tumour_in_brain: Fraction = Field(0.9, description="Lowest fraction of the tumour inside the brain mask.")
    min_snr: float = Field(5.0, description="Lowest SNR of the T1c before skull stripping.")
    min_sequence_contrast: float = Field(
        -0.5, description="Lowest tissue-contrast score of a modality pair (template-space WM/GM/CSF medians in IQR "
        "units; about 0 for identical contrasts, negative when two sequences are swapped).")


class QcConfig(Section):
    """Quality control of preprocessed subjects."""

    exclude_flagged: bool = Field(False, description="Leave flagged subjects out of training and validation.")
    thresholds: QcThresholds = Field(default_factory=QcThresholds, description="Flag thresholds.")


# ---- model, training, federation ------------------------------------------------------------------------------
class ModelConfig(Section):
    """The multi-task 3D U-Net (docs/training.md)."""

    in_channels: int = Field(len(MODALITIES), ge=1, description="Input channels (the four modalities).")
    width: int = Field(8, ge=1, description="Channels of the first encoder level; level i has width * 2**i.")
    depth: int = Field(3, ge=1, le=6, description="Number of stride-2 downsamplings; the bottleneck is at "
                       "1 / 2**depth of the input grid.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout in the classification heads (0 disables).")

    def architecture(self) -> dict[str, int]:
        """The keys that change parameter names or shapes (dropout does not)."""
        return {"in_channels": self.in_channels, "width": self.width, "depth": self.depth}


class AugmentConfig(Section):
    """Training-time augmentation (``true``/``false`` stands for ``{enabled: true/false}``)."""

    enabled: bool = Field(True, description="Master switch.")
    flip: bool = Field(True, description="Random flip of each axis with probability 0.5.")
    p_affine: Fraction = Field(0.5, description="Probability of a random rotation and scaling per sample.")
    rotate_deg: float = Field(10.0, ge=0, description="Rotation angles uniform in [-rotate_deg, rotate_deg] about "
                              "each axis.")
    scale: float = Field(0.1, ge=0, lt=1, description="Isotropic scaling factor uniform in [1 - scale, 1 + scale].")
    intensity_scale: float = Field(0.1, ge=0, lt=1, description="Per-channel multiplicative jitter uniform in "
                                   "[1 - s, 1 + s].")
    intensity_shift: float = Field(0.1, ge=0, description="Per-channel additive jitter uniform in [-s, s] (images "
                                   "are normalised).")


class LrScheduleConfig(Section):
    """Learning rate per federated round (a bare name stands for ``{name: <name>}``).

    The rate is fixed within a round and set per round by :func:`fedglioma.train.schedule.lr_for_round`, so every
    site uses the same rate in the same round.
    """

    name: Literal["constant", "cosine"] = Field(
        "constant", description="constant (train.lr in every round) or cosine (after the warm-up, half a cosine from "
        "train.lr towards train.lr * min_lr_ratio over the remaining federated.rounds).")
    warmup_rounds: int = Field(0, ge=0, description="Cosine: rounds of linear warm-up up to train.lr "
                               "(lr * r / (warmup_rounds + 1)); must be below federated.rounds.")
    min_lr_ratio: Fraction = Field(0.0, description="Cosine: floor as a fraction of train.lr.")


class TaskWeights(Section):
    """Loss weight of each term."""

    seg: float = Field(1.0, ge=0, description="Segmentation (soft Dice + BCE).")
    idh: float = Field(1.0, ge=0, description="IDH (BCE).")
    codeletion: float = Field(1.0, ge=0, description="1p/19q codeletion (BCE).")
    mgmt: float = Field(1.0, ge=0, description="MGMT promoter methylation (BCE).")
    grade: float = Field(1.0, ge=0, description="WHO grade (cross-entropy).")


#: The loss terms, in the order of :class:`TaskWeights`.
LOSS_TERMS: tuple[str, ...] = tuple(TaskWeights.model_fields)


class PrivacyConfig(Section):
    """Patient-level differential privacy of local training (DP-SGD with Opacus; fedglioma.train.privacy).

    One sample is one subject (patient); the guarantee is per site, over all local steps of all rounds of the
    site's training split. The baselines train without it.
    """

    enabled: bool = Field(False, description="DP-SGD in local training (per-subject gradient clipping, Gaussian "
                          "noise, Poisson sampling); off trains exactly as without this section.")
    noise_multiplier: PositiveFloat | None = Field(
        None, description="Noise standard deviation as a multiple of max_grad_norm (give this or target_epsilon).")
    target_epsilon: PositiveFloat | None = Field(
        None, description="Epsilon to reach after federated.rounds rounds: the noise multiplier is computed once for "
        "the planned schedule (rounds x epochs_per_round x steps per epoch; give this or noise_multiplier).")
    delta: float | None = Field(
        None, gt=0, lt=1, description="Delta of the guarantee; must be below 1/n of the site's training split. "
        "null: 1/(10 n) of each site.")
    max_grad_norm: PositiveFloat = Field(1.0, description="Per-subject gradient clipping norm (replaces "
                                         "train.grad_clip under DP).")
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant that composes the steps: rdp "
                                              "(Renyi DP) or prv (privacy random variables, tighter).")
    epsilon_budget: PositiveFloat | None = Field(
        None, description="Most epsilon a site may spend over all rounds; a round that would exceed it stops before "
        "training. null: target_epsilon when given, else no limit.")

    @model_validator(mode="after")
    def _one_noise_setting(self) -> PrivacyConfig:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("give noise_multiplier or target_epsilon, not both")
        if self.enabled and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("enabled: give noise_multiplier or target_epsilon")
        if (self.target_epsilon is not None and self.epsilon_budget is not None
                and self.target_epsilon > self.epsilon_budget):
            raise ValueError(f"target_epsilon {self.target_epsilon} exceeds epsilon_budget {self.epsilon_budget}")
        return self

    def budget(self) -> float | None:
        """The epsilon a site may spend in all: ``epsilon_budget``, else ``target_epsilon``, else no limit."""
        return self.epsilon_budget if self.epsilon_budget is not None else self.target_epsilon


class TrainConfig(Section):
    """Site-local training settings (also used by the baselines)."""

    epochs_per_round: int = Field(1, ge=1, description="Local epochs per federated round.")
    batch_size: int = Field(2, ge=1, description="Subjects per optimisation step.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of each site's subjects held out for "
                                "site-local validation (stable hash split by subject ID).")
    seed: int = Field(42, description="Seed of initialisation, split, shuffling, augmentation and dropout.")
    grad_clip: float = Field(12.0, ge=0, description="Max global gradient norm (0 disables).")
    amp: bool = Field(False, description="bfloat16 autocast on CUDA (ignored on CPU).")
    lr_schedule: Annotated[LrScheduleConfig, BeforeValidator(
        _from_name, json_schema_input_type=Literal["constant", "cosine"] | LrScheduleConfig)] = Field(
        default_factory=LrScheduleConfig, description="Learning rate per federated round: a schedule name or a "
        "mapping of name, warmup_rounds, min_lr_ratio.")
    augment: Annotated[AugmentConfig, BeforeValidator(
        _from_bool("enabled"), json_schema_input_type=bool | AugmentConfig)] = Field(
        default_factory=AugmentConfig, description="Augmentation: true/false or a mapping of its options.")
    task_weights: TaskWeights = Field(default_factory=TaskWeights, description="Loss weight per task.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Patient-level differential privacy "
                                   "of local training (DP-SGD).")


#: Strategy names accepted in ``federated.strategy``.
StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedyogi", "median", "trimmed_mean", "multi_krum"]
STRATEGY_NAMES: tuple[str, ...] = StrategyName.__args__


class FederatedConfig(Section):
    """Federated rounds and server aggregation."""

    rounds: int = Field(3, ge=1, description="Number of federated rounds (round 0 is the seeded initialisation).")
    strategy: StrategyName = Field("fedavg", description="Server aggregation strategy.")
    mu: float = Field(0.01, ge=0, description="FedProx proximal weight (client side).")
    server_lr: float = Field(0.01, gt=0, description="FedOpt server learning rate.")
    beta1: float = Field(0.9, ge=0, lt=1, description="FedOpt first-moment decay.")
    beta2: float = Field(0.99, ge=0, lt=1, description="FedOpt second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="FedOpt adaptivity (added to sqrt(v)).")
    trim_fraction: float = Field(0.1, ge=0, lt=0.5, description="Trimmed mean: fraction of the round's sites "
                                 "dropped at each end per coordinate, rounded up (0.1 of 5 sites drops 1 at each end) "
                                 "and capped so that at least one value remains.")
    krum_byzantine: int = Field(1, ge=0, description="Multi-Krum: number of attacking sites assumed per round (f). "
                                "It keeps the n - f updates closest to their n - f - 2 nearest others and averages "
                                "them; lowered in a round with fewer than 2f + 3 updates.")
    site_local_patterns: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="fnmatch patterns of parameter names kept at each site and never sent "
        "(FedBN-style personalisation, e.g. ['*.norm*']).")
    min_sites: int = Field(2, ge=1, description="Quorum of a round: it aggregates when at least this many training "
                           "sites delivered an accepted update (capped at the number of training sites); a site that "
                           "failed or whose update was refused is left out of that round and takes part again in "
                           "the next. Below the quorum the round fails, naming the sites and why.")
    site_attempts: int = Field(2, ge=1, description="Attempts of a site's local training inside its job (each in a "
                               "fresh child process, so an out-of-memory kill counts too) before the site is "
                               "recorded as failed for the round.")
    update_norm_bound: float | None = Field(None, gt=1, description="Bound k on an update's norm (the L2 norm of "
                                            "its change to the previous global model, over all shared parameters): "
                                            "an update above k times the median norm of the round's accepted "
                                            "updates is clipped to that bound or refused (update_norm_action). "
                                            "null: no bound.")
    update_min_cosine: float | None = Field(None, ge=-1, lt=1, description="Direction check: refuse an update whose "
                                            "cosine similarity with the coordinate-wise median of the other sites' "
                                            "changes is below this (0: it points away from what the others agree "
                                            "on, as a sign-flipped update does). Needs 3 or more updates in the "
                                            "round. null: no check.")
    update_norm_action: Literal["clip", "refuse"] = Field("clip", description="What the update-norm bound does to "
                                                          "an update above it: clip (scale its change down to the "
                                                          "bound) or refuse (leave the site out of the round).")


# ---- evaluation, endpoints, baselines, cluster ----------------------------------------------------------------
class EvaluationConfig(Section):
    """External evaluation."""

    n_bootstrap: int = Field(1000, ge=100, description="Stratified bootstrap resamples for confidence intervals.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    native_masks: bool = Field(True, description="Write predicted masks in each subject's native space.")


class Endpoints(Section):
    """Which subjects count for each classification endpoint, in training loss, validation, thresholds, external
    metrics and the model comparison alike (fedglioma.endpoints)."""

    codeletion: Literal["idh_mutant", "all"] = Field(
        "idh_mutant", description="Population of the 1p/19q endpoint: idh_mutant (only IDH-mutant subjects count; "
        "WHO CNS 2021) or all (every subject with a 1p/19q label). The report also shows the other population's AUC "
        "with its n.")

    def other(self) -> Endpoints:
        """The same endpoints with the other 1p/19q population (the report's secondary AUC)."""
        return Endpoints(codeletion="all" if self.codeletion == "idh_mutant" else "idh_mutant")


class BaselinesConfig(Section):
    """Baselines with the same model, total epochs and seeds."""

    centralized: bool = Field(False, description="Centralized training on the pooled training sites.")
    local_only: bool = Field(False, description="Local-only training of each training site.")


class PredictConfig(Section):
    """The model bundle the workflow exports, and prediction on new patients (sites with role `predict`;
    docs/predict.md)."""

    model: str = Field("federated", pattern=r"^(federated|centralized|local-[A-Za-z0-9_-]+)$",
                       description="Which evaluated model the workflow exports as its bundle: federated, "
                       "centralized or local-<site> (a baseline must be switched on under baselines).")
    name: str = Field("model", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Bundle name: the workflow writes results/model/fedglioma-<name>.zip.")
    bundle: str = Field("", description="Bundle the `predict` sites use (a path); empty: the one this workflow "
                        "exports. A hospital that never trained sets it to the bundle it received.")
    keep_intermediates: bool = Field(False, description="Keep each predicted patient's preprocessing step "
                                     "folders (work/ in its prediction folder) for debugging.")


class AttackConfig(Section):
    """A simulated attacker, for robustness studies only (benchmarks/robustness.py): one training site replaces
    the update it sends with a manipulated one, every round. Never set in a real federation."""

    site: str | None = Field(None, description="The attacking training site (null: no attack).")
    kind: Literal["sign_flip", "scale", "noise"] = Field(
        "sign_flip", description="What the attacker sends, as a change d to the previous global model: sign_flip "
        "-d, scale factor * d, noise Gaussian noise with factor times the RMS of d per tensor (d itself discarded).")
    factor: PositiveFloat = Field(10.0, description="Scale of the scale and noise attacks.")


class ClusterConfig(Section):
    """SLURM partitions and accounts used when sites.tsv leaves them empty, and the coordinator's."""

    partition: str = Field("", description="Default partition of every job (empty = SLURM's default).")
    account: str = Field("", description="Default account of every job (empty = SLURM's default).")
    coordinator_partition: str = Field("", description="Partition of the server and report jobs.")
    coordinator_account: str = Field("", description="Account of the server and report jobs.")


class Config(Section):
    """fedglioma workflow configuration (config/config.yaml)."""

    model_config = ConfigDict(title="fedglioma configuration")

    sites: str = Field("config/sites.tsv", description="Path of the sites table (one row per site).")
    demo: DemoConfig = Field(default_factory=DemoConfig, description="Built-in synthetic demo cohort.")
    inputs: InputsConfig = Field(default_factory=InputsConfig, description="Handling of input-contract problems.")
    layouts: LayoutsConfig = Field(default_factory=LayoutsConfig, description="Options of the site layouts.")
    clinical: ClinicalConfig = Field(default_factory=ClinicalConfig, description="Mapping of clinical tables to the "
                                     "targets.")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig, description="Per-site preprocessing.")
    qc: QcConfig = Field(default_factory=QcConfig, description="Quality control of preprocessed subjects.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The multi-task 3D U-Net.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Site-local training settings.")
    federated: FederatedConfig = Field(default_factory=FederatedConfig, description="Federated rounds and server "
                                       "aggregation.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="External evaluation.")
    endpoints: Endpoints = Field(default_factory=Endpoints, description="Which subjects count for each endpoint.")
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig, description="Centralized and local-only "
                                       "baselines.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Model bundle and prediction on new "
                                   "patients.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="SLURM partitions and accounts.")
    attack: AttackConfig = Field(default_factory=AttackConfig, description="Simulated attacker for robustness "
                                 "studies (never in a real federation).")


# ---- validation -----------------------------------------------------------------------------------------------
def _path(loc: Sequence[int | str], data: Any) -> str:
    """The dotted path of an error location in ``data``, without pydantic's union tags (which are not keys)."""
    keys: list[str] = []
    for item in loc:
        is_key = isinstance(data, Mapping) and item in data
        is_index = isinstance(data, list) and isinstance(item, int) and 0 <= item < len(data)
        if is_key or is_index:
            data = data[item]
        elif keys and isinstance(data, Mapping | list):
            continue  # the name of a union member
        else:
            data = None
        keys.append(f"[{item}]" if isinstance(item, int) else str(item))
    return ".".join(keys).replace(".[", "[")


def _known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys the section at ``loc[:-1]`` inside ``model`` knows (of every model a union there may hold)."""
    models = [model]
    for item in loc[:-1]:
        inner = [m for m in models if isinstance(item, str) and item in m.model_fields]
        if inner:
            models = [sub for m in inner for sub in _models(m.model_fields[str(item)].annotation)] or models
    return sorted({name for m in models for name in m.model_fields})


def _fix(error: Mapping[str, Any], model: type[BaseModel], key: str) -> str:
    """What to do about one validation error: an unknown key names the closest known ones."""
    import difflib

    if error["type"] == "extra_forbidden":
        known = _known_keys(model, error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known keys here: {', '.join(known)}"
        return f"remove {key} or correct its spelling ({hint})"
    return f"give {key} a value as config/README.md describes it"


def _error(exc: ValidationError, data: Any, *, model: type[BaseModel], what: str, prefix: str = "") -> ConfigError:
    """One line per problem, every problem at once: ``<what>: <key path>: <message>. Fix: <what to do>``."""
    lines = []
    for e in exc.errors(include_url=False):
        key = f"{prefix}{_path(e['loc'], data)}".rstrip(".") or "(top)"
        lines.append(f"{what}: {key}: {e['msg'][0].lower()}{e['msg'][1:]}. Fix: {_fix(e, model, key)}")
    return ConfigError("\n".join(dict.fromkeys(lines)))


def parse(model: type[M], data: Any, *, what: str, prefix: str = "") -> M:
    """``data`` validated as ``model`` (missing keys take their defaults); a problem raises :class:`ConfigError`
    naming ``what`` and, one a line, every key at fault (``prefix`` + the path inside ``data``) with its fix."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise _error(exc, data, what=what, prefix=prefix, model=model) from None


def _shown(path: str | Path) -> str:
    """``path`` as an error names it: relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def validate_config(config: Mapping[str, Any], *, files: Iterable[str | Path] = ()) -> Config:
    """The validated :class:`Config` of a configuration dict read from ``files`` (e.g. Snakemake's ``config``
    merged from ``workflow.configfiles``); errors name the files and each key's path."""
    return parse(Config, config, what=", ".join(dict.fromkeys(map(_shown, files))) or "config")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file; an empty file is ``{}``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` with ``KEY=VALUE`` overrides (``KEY`` a dotted path such as ``train.epochs_per_round``,
    ``VALUE`` read as YAML) applied: what ``--set`` does."""
    import copy

    out = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs_per_round=2), got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from exc
    return out


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> Config:
    """Read a config file (``config/config.yaml`` by default), apply ``--set`` ``overrides`` and validate; every
    default filled in."""
    return validate_config(apply_overrides(read_yaml(path), overrides),
                           files=[path, *(["--set " + " ".join(overrides)] if overrides else [])])


def section(model: type[M], data: Mapping[str, Any] | None, name: str) -> M:
    """Config section ``name`` (e.g. ``train`` or ``preprocess.n4``, as a rule or step receives it) validated as
    ``model``; errors name the key as ``<name>.<key>``."""
    return parse(model, data, what="config", prefix=f"{name}.")


def section_params(model: type[Section], params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A step's keyword parameters (config section ``name``) validated by ``model``, as a plain dict with every
    default: what the step functions work with and record in ``state.json``."""
    return section(model, params, name).model_dump(mode="json")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``: how every command takes configuration (read with :func:`load_config`)."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="config.yaml (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs_per_round=2 (repeatable; "
                             "the value is read as YAML)")


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration a command's ``--config`` and ``--set`` give, as the plain dict the workflow's rules see
    (``common.smk`` passes the same dump)."""
    return load_config(args.config, overrides=args.overrides).model_dump(mode="json")


# ---- generated files ------------------------------------------------------------------------------------------
def json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`Config` (what ``schemas/config.schema.yaml`` holds)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}


def schema_text() -> str:
    """``schemas/config.schema.yaml`` as it should read."""
    head = "# Generated from fedglioma.settings.Config by `python -m fedglioma.settings`: do not edit.\n"
    return head + yaml.safe_dump(json_schema(), sort_keys=False, width=120, allow_unicode=True)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The section models an annotation holds (a union such as ``normalise`` holds several)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo, list[type[BaseModel]]]]:
    """Every key under ``model``, depth first, with its field and the section models it holds (``[]`` for a
    value); the keys of ``clinical.sites.<site>`` are those of ``clinical.default`` and are not repeated."""
    for name, field in model.model_fields.items():
        subs = [] if get_origin(field.annotation) is dict else _models(field.annotation)
        yield f"{prefix}{name}", field, subs
        for sub in subs:
            yield from _keys(sub, f"{prefix}{name}.")


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section of :class:`Config` with its dotted path: ``("", Config)``, ``("demo", DemoConfig)``, ...;
    a union such as ``preprocess.normalise`` gives one entry per model."""
    return [("", Config)] + [(key, sub) for key, _, subs in _keys(Config) for sub in subs]


def _default_text(field: FieldInfo) -> str:
    """A field's default as the key table shows it (nothing for a section or a required key)."""
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined or isinstance(value, BaseModel):
        return ""
    return "`" + yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip() + "`"


def _choices(annotation: Any) -> list[str]:
    """The values a ``Literal`` annotation (or a list of one) allows."""
    return [str(v) for arg in [annotation, *get_args(annotation)] if get_origin(arg) is Literal for v in get_args(arg)]


def key_table() -> str:
    """The Markdown table of every key of :class:`Config` (generated into ``config/README.md``)."""
    fields: dict[str, FieldInfo] = {}
    choices: dict[str, list[str]] = {}
    for key, field, _ in _keys(Config):  # a key of several union members (normalise.method) has their choices
        fields.setdefault(key, field)
        choices.setdefault(key, []).extend(c for c in _choices(field.annotation) if c not in choices[key])
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, field in fields.items():
        one_of = f" One of: {', '.join(choices[key])}." if choices[key] else ""
        rows.append(f"| `{key}` | {_default_text(field)} | {field.description or ''}{one_of} |")
    return "\n".join(rows) + "\n"


README = Path(__file__).resolve().parents[3] / "config" / "README.md"
_TABLE = re.compile(r"(<!-- keys: begin.*?-->\n)(.*?)(<!-- keys: end -->)", re.S)


def readme_text(text: str) -> str:
    """``config/README.md`` text with its generated key table replaced by the current one."""
    if not _TABLE.search(text):
        raise ConfigError("config/README.md has no '<!-- keys: begin -->' ... '<!-- keys: end -->' block")
    return _TABLE.sub(lambda m: m[1] + key_table() + m[3], text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedglioma.settings``: rewrite the JSON schema and the key table of config/README.md."""
    parser = argparse.ArgumentParser(prog="python -m fedglioma.settings", description=main.__doc__)
    parser.parse_args(argv)
    SCHEMA_FILE.write_text(schema_text())
    README.write_text(readme_text(README.read_text()))
    print(f"wrote {SCHEMA_FILE} and the key table of {README}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
