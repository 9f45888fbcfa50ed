"""Write synthetic sites and cohorts in the BraTS 2021 layout (byte-identical for a given seed).

Per site folder::

    {site}/BraTS2021_{NNNNN}/BraTS2021_{NNNNN}_{t1,t1ce,t2,flair}.nii.gz   (int16, native scanner grid)
    {site}/BraTS2021_{NNNNN}/BraTS2021_{NNNNN}_seg.nii.gz                 (uint8 0/1/2/4; absent when not recorded)
    {site}/clinical.tsv                                                   (subject, IDH, 1p19q, MGMT, grade)

Every file is written atomically; gzip streams carry no name and mtime 0.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from fedglioma.atomic import atomic_path, write_text
from fedglioma.errors import ConfigError
from fedglioma.synth.labels import CLINICAL_COLUMNS
from fedglioma.synth.render import SyntheticSubject, synthesize_subject
from fedglioma.synth.sites import (
    LAYOUTS,
    MAX_SITES,
    SiteSpec,
    check_counts,
    check_seed,
    default_site_specs,
    subject_ids,
)
from fedglioma.synth.tumour import check_strengths

log = logging.getLogger(__name__)

#: File suffix of each modality in the BraTS 2021 layout.
BRATS2021_SUFFIX: dict[str, str] = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}
#: gzip level of the NIfTI files (1: fast; noisy images hardly compress further).
GZIP_LEVEL = 1


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


def write_subject(site_dir: str | Path, sub: SyntheticSubject) -> Path:
    """Write one subject's images (and segmentation when recorded) under ``site_dir``; returns its folder."""
    folder = Path(site_dir) / sub.subject
    folder.mkdir(parents=True, exist_ok=True)
    for modality, suffix in BRATS2021_SUFFIX.items():
        _write_bytes(folder / f"{sub.subject}_{suffix}.nii.gz", nifti_bytes(sub.images[modality], sub.affine, np.int16))
    seg_path = folder / f"{sub.subject}_seg.nii.gz"
    if sub.has_seg:
        _write_bytes(seg_path, nifti_bytes(sub.seg, sub.affine, np.uint8))
    else:
        seg_path.unlink(missing_ok=True)  # a stale segmentation from an earlier run would lie
    return folder


def check_layout(layout: str) -> None:
    """Raise ConfigError unless the generator can write ``layout``."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown output layout {layout!r}: the generator writes only {', '.join(LAYOUTS)}")


def generate_site(
    out_dir: str | Path,
    spec: SiteSpec,
    site_index: int,
    n_subjects: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    layout: str = "brats2021",
) -> Path:
    """Generate ``n_subjects`` subjects of one site into ``out_dir`` (the site folder); returns ``out_dir``.

    All parameters are validated before anything is written.
    """
    check_layout(layout)
    check_counts(site_index, n_subjects)
    check_seed(seed)
    spec.validate()
    strengths = check_strengths(strengths)
    out = Path(out_dir)
    rows = ["\t".join(CLINICAL_COLUMNS)]
    start = time.perf_counter()
    for i, sid in enumerate(subject_ids(site_index, n_subjects)):
        sub = synthesize_subject(spec, i, seed, strengths, site_index=site_index)
        write_subject(out, sub)
        rows.append("\t".join([sid, *(sub.clinical[c] for c in CLINICAL_COLUMNS[1:])]))
    write_text(out / "clinical.tsv", "\n".join(rows) + "\n")
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
    layout: str = "brats2021",
) -> Path:
    """Generate site ``site_index`` of ``default_site_specs(n_sites, seed)`` into ``out_dir`` (the site folder)."""
    check_layout(layout)
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or not 1 <= n_sites <= MAX_SITES:
        raise ConfigError(f"n_sites must be an integer in 1..{MAX_SITES}, got {n_sites!r}")
    check_counts(site_index, n_subjects, n_sites)
    check_seed(seed)
    spec = default_site_specs(n_sites, seed)[site_index]
    return generate_site(out_dir, spec, site_index, n_subjects, seed, strengths, layout=layout)


def generate_cohort(
    out_dir: str | Path,
    n_sites: int,
    subjects_per_site: int,
    seed: int,
    strengths: Mapping[str, float] | None = None,
    *,
    external_subjects: int | None = None,
    layout: str = "brats2021",
) -> list[Path]:
    """Generate ``n_sites`` default sites into ``out_dir/{site name}`` (``SiteA``.., ``External``).

    ``external_subjects`` (default ``subjects_per_site``) sets the external
    site's size. Returns the site folders. Everything is validated first.
    """
    check_layout(layout)
    specs = default_site_specs(n_sites, seed)
    n_ext = subjects_per_site if external_subjects is None else external_subjects
    counts = [n_ext if s.role == "external" else subjects_per_site for s in specs]
    for i, n in enumerate(counts):
        check_counts(i, n, n_sites)
    strengths = check_strengths(strengths)
    return [
        generate_site(Path(out_dir) / spec.name, spec, i, n, seed, strengths, layout=layout)
        for i, (spec, n) in enumerate(zip(specs, counts, strict=True))
    ]
