"""``fedglioma cohort check-inputs``: validate the input contract without running anything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedglioma.config import SiteRow
from fedglioma.constants import MAX_IMAGE_MB, MODALITIES, TASKS
from fedglioma.declared import Declared
from fedglioma.errors import InputError, InputErrors
from fedglioma.io.clinical import harmonise, read_table, site_mapping
from fedglioma.io.layouts import Subject, discover
from fedglioma.io.nifti import check_same_grid, load_nifti
from fedglioma.preprocess.site_checks import check_declared


@dataclass
class SiteCheck:
    """What ``check_site`` found at one site."""

    row: SiteRow
    subjects: list[Subject] = field(default_factory=list)
    labels: pd.DataFrame | None = None
    problems: list[InputError] = field(default_factory=list)


def check_seg_values(data: np.ndarray, tumour_labels: Sequence[int], *, site: str, subject: str, file: Path,
                     non_tumour_labels: Sequence[int] = ()) -> None:
    """Raise when the segmentation holds a value that is neither background nor a declared (non-)tumour label:
    the import step's own check (:func:`fedglioma.preprocess.importing.whole_tumour`)."""
    from fedglioma.preprocess.importing import whole_tumour

    whole_tumour(data, tumour_labels, non_tumour_labels=non_tumour_labels, site=site, subject=subject, file=file)

def check_subject_files(s: Subject, tumour_labels: Sequence[int], *, read_voxels: bool = True,
                        non_tumour_labels: Sequence[int] = (), declared: Declared | None = None,
                        max_image_mb: float = MAX_IMAGE_MB) -> list[InputError]:
    """Open every file of a subject; return the problems (never raises InputError). An image whose header
    declares more than ``max_image_mb`` MiB of voxels is refused before its data are read.

    With ``read_voxels`` the site's declaration is checked as the import step checks it
    (:func:`fedglioma.preprocess.site_checks.check_declared`: template grid, no skull when declared skull-stripped).
    """
    problems: list[InputError] = []
    ref = None
    imgs = {}
    for mod in MODALITIES:
        try:
            img = load_nifti(s.images[mod], site=s.site, subject=s.subject, load_data=read_voxels,
                             max_mb=max_image_mb)
            imgs[mod] = img
            if mod == "T1c":
                ref = img
        except InputError as e:
            problems.append(e)
    if read_voxels and declared is not None and len(imgs) == len(MODALITIES):
        try:
            check_declared(imgs, declared, site=s.site, subject=s.subject,
                           files={m: str(p) for m, p in s.images.items()})
        except InputError as e:
            problems.append(e)
    if s.seg is not None:
        try:
            seg = load_nifti(s.seg, site=s.site, subject=s.subject, load_data=read_voxels, allow_empty=True,
                             max_mb=max_image_mb)
            if ref is not None:
                check_same_grid(ref, seg, site=s.site, subject=s.subject, file=s.seg, what="segmentation")
            if read_voxels:
                check_seg_values(np.asanyarray(seg.dataobj), tumour_labels, site=s.site, subject=s.subject, file=s.seg,
                                 non_tumour_labels=non_tumour_labels)
        except InputError as e:
            problems.append(e)
    return problems


def check_site(row: SiteRow, clinical_cfg: Mapping[str, Any] | None = None, *, read_voxels: bool = True,
               layout_options: Mapping[str, Any] | None = None, max_image_mb: float = MAX_IMAGE_MB) -> SiteCheck:
    """Check one site: folder layout, every image (none over ``max_image_mb``, config ``inputs.max_image_mb``),
    the clinical table, and their agreement."""
    out = SiteCheck(row)
    try:
        found = discover(row.path, row.layout, row.site, **dict(layout_options or {}))
    except InputError as e:
        out.problems.append(e)
        return out
    out.problems.extend(found.problems)
    if not found.subjects and not found.problems:
        out.problems.append(InputError(f"no subjects found in the {row.layout} layout", site=row.site, file=row.path,
                                       fix="check the path and layout columns of sites.tsv"))
    for s in found.subjects:
        bad = check_subject_files(s, row.tumour_labels, read_voxels=read_voxels,
                                  non_tumour_labels=row.non_tumour_labels, declared=row.declared,
                                  max_image_mb=max_image_mb)
        out.problems.extend(bad)
        if not bad:
            out.subjects.append(s)
    if row.clinical:
        try:
            table = read_table(row.clinical, site=row.site)
            labels = harmonise(table, site_mapping(clinical_cfg, row.site), site=row.site, file=row.clinical)
            with_images = {s.subject for s in found.subjects} | {p.subject for p in found.problems if p.subject}
            for sid in labels["subject"]:
                if sid not in with_images:
                    out.problems.append(InputError("listed in the clinical table but has no images", site=row.site,
                                                   subject=sid, file=row.clinical,
                                                   fix="add the subject's images or remove the row"))
            out.labels = labels
        except InputError as e:
            out.problems.extend(e.problems if isinstance(e, InputErrors) else [e])
    return out


def summary_table(checks: Sequence[SiteCheck]) -> pd.DataFrame:
    """One row per subject: site, role, subject, modalities found, segmentation, labels available."""
    rows = []
    for c in checks:
        labels = c.labels.set_index("subject") if c.labels is not None else None
        for s in c.subjects:
            rec: dict[str, Any] = {"site": c.row.site, "role": c.row.role, "subject": s.subject,
                                   "modalities": ",".join(m for m in MODALITIES if m in s.images),
                                   "seg": "yes" if s.seg else "no"}
            for t in TASKS:
                v = labels[t].get(s.subject, np.nan) if labels is not None and s.subject in labels.index else np.nan
                rec[t] = "-" if pd.isna(v) else int(v)
            rows.append(rec)
    return pd.DataFrame(rows, columns=["site", "role", "subject", "modalities", "seg", *TASKS])


def site_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per-site counts: subjects, with segmentation, with each label."""
    if table.empty:
        return pd.DataFrame(columns=["site", "role", "subjects", "seg", *TASKS])
    g = table.groupby(["site", "role"], sort=False)
    out = g.size().rename("subjects").to_frame()
    out["seg"] = g["seg"].apply(lambda s: int((s == "yes").sum()))
    for t in TASKS:
        out[t] = g[t].apply(lambda s: int((s != "-").sum()))
    return out.reset_index()
