"""Write synthetic sites and cohorts, each site as the dataset it mirrors (byte-identical for a given seed).

Per site folder (``layout`` of the site spec; the readers of ``fedglioma.io.layouts`` find them)::

    brats2021  BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz
    brats2023  BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz
    ucsf_pdgm  UCSF-PDGM-NNNN_nifti/UCSF-PDGM-NNNN_{T1,T1c,T2,FLAIR,tumor_segmentation}.nii.gz
    upenn_gbm  <ID>/<ID>_{T1,T1GD,T2,FLAIR,segm}.nii.gz
    egd        <ID>/{T1,T1GD,T2,FLAIR,MASK}.nii.gz
    + the clinical table (name and format of the site's clinical style) and ``synthetic.json``

Images are int16, segmentations uint8 in the layout's label values (absent when the site does not
record one). Every file is written atomically; gzip streams carry no name and mtime 0.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedglioma.atomic import atomic_path, write_json, write_text
from fedglioma.constants import MODALITIES
from fedglioma.errors import ConfigError
from fedglioma.synth.clinical import STYLES, table_text
from fedglioma.synth.render import SyntheticSubject, TemplateTransform, clinical_case, synthesize_subject
from fedglioma.synth.sites import (
    LAYOUTS,
    MAX_SITES,
    SiteSpec,
    check_counts,
    check_seed,
    default_site_specs,
    site_subject_ids,
    with_layout,
)
from fedglioma.synth.tumour import check_strengths

log = logging.getLogger(__name__)

#: gzip level of the NIfTI files (1: fast; noisy images hardly compress further).
GZIP_LEVEL = 1
#: Provenance file written into every generated site folder.
MANIFEST = "synthetic.json"

#: Per layout: subject folder name, image file stem per modality, segmentation file stem (all from the ID).
_FILES: dict[str, tuple[Callable[[str], str], dict[str, str], Callable[[str], str]]] = {
    "brats2021": (lambda s: s, {"T1": "{s}_t1", "T1c": "{s}_t1ce", "T2": "{s}_t2", "FLAIR": "{s}_flair"},
                  lambda s: f"{s}_seg"),
    "brats2023": (lambda s: s, {"T1": "{s}-t1n", "T1c": "{s}-t1c", "T2": "{s}-t2w", "FLAIR": "{s}-t2f"},
                  lambda s: f"{s}-seg"),
    "ucsf_pdgm": (lambda s: f"{s}_nifti", {"T1": "{s}_T1", "T1c": "{s}_T1c", "T2": "{s}_T2", "FLAIR": "{s}_FLAIR"},
                  lambda s: f"{s}_tumor_segmentation"),
    "upenn_gbm": (lambda s: s, {"T1": "{s}_T1", "T1c": "{s}_T1GD", "T2": "{s}_T2", "FLAIR": "{s}_FLAIR"},
                  lambda s: f"{s}_segm"),
    "egd": (lambda s: s, {"T1": "T1", "T1c": "T1GD", "T2": "T2", "FLAIR": "FLAIR"}, lambda s: "MASK"),
}


def layout_labels(seg: np.ndarray, layout: str) -> np.ndarray:
    """Internal labels (0, 1, 2, 4, 5 = cavity) -> the layout's values: BraTS 2021 / UCSF / UPENN 1/2/4
    (no cavity label: cavity voxels 0), BraTS 2023 1/2/3 with the cavity as 4 (2024 post-treatment
    style), EGD a binary whole-tumour mask."""
    seg = np.asarray(seg, dtype=np.uint8)
    if layout == "egd":
        return np.isin(seg, (1, 2, 4)).astype(np.uint8)
    if layout == "brats2023":
        lut = np.array([0, 1, 2, 0, 3, 4], dtype=np.uint8)
    else:
        lut = np.array([0, 1, 2, 0, 4, 0], dtype=np.uint8)
    return lut[seg]


def nifti_bytes(data: np.ndarray, affine: np.ndarray, dtype: type) -> bytes:
    """Deterministic ``.nii.gz`` bytes of ``data`` stored as ``dtype`` (sform and qform = scanner, mm units)."""
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def _write_bytes(path: Path, payload: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def subject_files(site_dir: str | Path, subject: str, layout: str) -> tuple[dict[str, Path], Path]:
    """Where ``layout`` puts a subject's images (by modality) and segmentation."""
    folder_of, stems, seg_of = _FILES[layout]
    folder = Path(site_dir) / folder_of(subject)
    return {m: folder / f"{stems[m].format(s=subject)}.nii.gz" for m in MODALITIES}, folder / f"{seg_of(subject)}.nii.gz"


def write_subject(site_dir: str | Path, sub: SyntheticSubject, layout: str = "brats2021") -> Path:
    """Write one subject's images (and segmentation when recorded) under ``site_dir``; returns its folder."""
    check_layout(layout)
    images, seg_path = subject_files(site_dir, sub.subject, layout)
    for modality, path in images.items():
        affine = sub.affines.get(modality, sub.affine)
        _write_bytes(path, nifti_bytes(sub.images[modality], affine, np.int16))
    if sub.has_seg:
        _write_bytes(seg_path, nifti_bytes(layout_labels(sub.seg, layout), sub.affine, np.uint8))
    else:
        seg_path.unlink(missing_ok=True)  # a stale segmentation from an earlier run would lie
    return seg_path.parent


def check_layout(layout: str) -> None:
    """Raise ConfigError unless the generator can write ``layout``."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown output layout {layout!r}: the generator writes only {', '.join(LAYOUTS)}")


def site_clinical(spec: SiteSpec, site_index: int, n_subjects: int, seed: int) -> tuple[str, list[dict[str, float | None]]]:
    """The site's clinical table text and, per subject, what it records (no images: cheap)."""
    rows, recorded = [], []
    for i in range(n_subjects):
        cells, rec, _ = clinical_case(spec, i, seed, site_index=site_index)
        rows.append(cells)
        recorded.append(rec)
    return table_text(spec.clinical_style, rows), recorded


def generate_site(
    out_dir: str | Path,
    spec: SiteSpec,
    site_index: int,
    n_subjects: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    layout: str | None = None,
    template_transforms: Mapping[str, TemplateTransform] | None = None,
) -> Path:
    """Generate ``n_subjects`` subjects of one site into ``out_dir`` (the site folder); returns ``out_dir``.

    ``layout`` overrides the spec's. ``template_transforms``: see :func:`~fedglioma.synth.render.synthesize_subject`
    (needed for SRI24 sites). All parameters are validated before anything is written.
    """
    if layout is not None:
        check_layout(layout)
        spec = with_layout(spec, layout)
    check_counts(site_index, n_subjects)
    check_seed(seed)
    spec.validate()
    strengths = check_strengths(strengths)
    if spec.space == "SRI24":
        from fedglioma.synth.render import space_from_mni

        space_from_mni(spec.space, template_transforms)  # fails before writing when the transform is missing
    out = Path(out_dir)
    start = time.perf_counter()
    for i in range(n_subjects):
        sub = synthesize_subject(spec, i, seed, strengths, site_index=site_index, template_transforms=template_transforms)
        write_subject(out, sub, spec.layout)
    text, _ = site_clinical(spec, site_index, n_subjects, seed)
    write_text(out / STYLES[spec.clinical_style].filename, text)
    manifest = {
        "synthetic": True,
        "note": "synthetic data (fedglioma.synth): not for clinical conclusions",
        "site": spec.name,
        "layout": spec.layout,
        "space": spec.space,
        "skull_stripped": spec.skull_stripped,
        "clinical": STYLES[spec.clinical_style].filename,
        "subjects": site_subject_ids(spec, site_index, n_subjects),
        "seed": int(seed),
    }
    write_json(out / MANIFEST, manifest)
    log.info("site %s: %d subjects in %.1f s -> %s", spec.name, n_subjects, time.perf_counter() - start, out)
    return out


def generate_demo_site(
    out_dir: str | Path,
    site_index: int,
    n_sites: int,
    n_subjects: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    layout: str | None = None,
    template_transforms: Mapping[str, TemplateTransform] | None = None,
) -> Path:
    """Generate site ``site_index`` of ``default_site_specs(n_sites, seed)`` into ``out_dir`` (the site folder)."""
    if layout is not None:
        check_layout(layout)
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or not 1 <= n_sites <= MAX_SITES:
        raise ConfigError(f"n_sites must be an integer in 1..{MAX_SITES}, got {n_sites!r}")
    check_counts(site_index, n_subjects, n_sites)
    check_seed(seed)
    spec = default_site_specs(n_sites, seed)[site_index]
    return generate_site(out_dir, spec, site_index, n_subjects, seed, strengths, layout=layout,
                         template_transforms=template_transforms)


def generate_cohort(
    out_dir: str | Path,
    n_sites: int,
    subjects_per_site: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    external_subjects: int | None = None,
    layout: str | None = None,
    template_transforms: Mapping[str, TemplateTransform] | None = None,
) -> list[Path]:
    """Generate ``n_sites`` default sites into ``out_dir/{site name}`` (``SiteA``.., ``External``).

    ``external_subjects`` (default ``subjects_per_site``) sets the external site's size; ``layout``
    (default: each site's own) writes every site in one layout. Returns the site folders. Everything is
    validated first.
    """
    if layout is not None:
        check_layout(layout)
    specs = default_site_specs(n_sites, seed)
    if layout is not None:
        specs = [with_layout(s, layout) for s in specs]
    n_ext = subjects_per_site if external_subjects is None else external_subjects
    counts = [n_ext if s.role == "external" else subjects_per_site for s in specs]
    for i, n in enumerate(counts):
        check_counts(i, n, n_sites)
    strengths = check_strengths(strengths)
    if any(s.space == "SRI24" for s in specs):
        from fedglioma.synth.render import space_from_mni

        space_from_mni("SRI24", template_transforms)
    return [
        generate_site(Path(out_dir) / spec.name, spec, i, n, seed, strengths, template_transforms=template_transforms)
        for i, (spec, n) in enumerate(zip(specs, counts, strict=True))
    ]


def synth_site(site_dir: str, *, site_index: int, n_sites: int, n_subjects: int, demo_cfg: Mapping[str, Any],
               template_transforms: Sequence[str] = ()) -> Path:
    """Rule ``synth_site`` / ``fedglioma cohort synth-site``: demo site ``site_index`` of ``n_sites`` into
    ``site_dir``, with the config's ``demo`` seed and strengths.

    ``template_transforms`` are folders of ``fedglioma preprocess template-transform`` named
    ``{space}_to_MNI152`` (a site in SRI24 space is rendered through ``SRI24_to_MNI152``).
    """
    transforms = {Path(p).name.split("_to_")[0]: p for p in template_transforms}
    return generate_demo_site(site_dir, site_index, n_sites, n_subjects, int(demo_cfg["seed"]),
                              dict(demo_cfg.get("strengths") or {}), template_transforms=transforms)
