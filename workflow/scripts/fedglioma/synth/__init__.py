"""Built-in synthetic multi-site glioma cohort (demo data; synthetic, not for clinical conclusions).

Heads are built around nilearn's bundled MNI152 2009 brain (skull, scalp, face,
neck added). Each training site is written as a public dataset (BraTS 2021, BraTS 2023,
UCSF-PDGM, UPENN-GBM, EGD: layout, IDs, label values, skull-stripped, template space, clinical
table), the external site as a raw hospital export (skull on, 2D sequences each on its own grid).
Tumours' appearance depends on IDH, 1p/19q, MGMT and grade with documented strengths; scanners
differ in intensity scale, gamma, noise and bias field. See ``docs/synth.md``.

Public API::

    SiteSpec, GridSpec, default_site_specs(n_sites, seed), subject_ids(site_index, n, style),
    site_subject_ids(spec, site_index, n), demo_site_row(spec, site, out), demo_clinical_mapping(spec)
    sample_labels(rng, prevalence), sample_case(spec, subject_index, seed, strengths, site_index=)
    synthesize_subject(spec, subject_index, seed, strengths, site_index=) -> SyntheticSubject
    clinical_case(spec, subject_index, seed, site_index=), site_clinical(spec, site_index, n, seed)
    generate_site(out_dir, spec, site_index, n_subjects, seed, strengths, template_transforms=) -> Path
    generate_demo_site(out_dir, site_index, n_sites, n_subjects, seed, strengths, template_transforms=) -> Path
    generate_cohort(out_dir, n_sites, subjects_per_site, seed, strengths, template_transforms=) -> list[Path]

Light names (site specs, IDs, labels) import eagerly; the renderer and writer
load on first use, so ``from fedglioma.synth import subject_ids`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedglioma.synth.labels import DEFAULT_PREVALENCE, GRADE_STYLES, Labels, sample_labels
from fedglioma.synth.sites import (
    GridSpec,
    SiteSpec,
    default_site_specs,
    demo_clinical_mapping,
    demo_site_row,
    site_name,
    site_subject_ids,
    subject_ids,
)

_LAZY = {
    "DEFAULT_STRENGTHS": "fedglioma.synth.tumour",
    "TumourGeometry": "fedglioma.synth.tumour",
    "check_strengths": "fedglioma.synth.tumour",
    "template_seg": "fedglioma.synth.tumour",
    "SyntheticSubject": "fedglioma.synth.render",
    "sample_case": "fedglioma.synth.render",
    "synthesize_subject": "fedglioma.synth.render",
    "clinical_case": "fedglioma.synth.render",
    "site_clinical": "fedglioma.synth.cohort",
    "generate_site": "fedglioma.synth.cohort",
    "generate_demo_site": "fedglioma.synth.cohort",
    "generate_cohort": "fedglioma.synth.cohort",
    "write_subject": "fedglioma.synth.cohort",
    "head_model": "fedglioma.synth.anatomy",
}

__all__ = [
    "DEFAULT_PREVALENCE",
    "GRADE_STYLES",
    "Labels",
    "GridSpec",
    "SiteSpec",
    "default_site_specs",
    "demo_clinical_mapping",
    "demo_site_row",
    "sample_labels",
    "site_name",
    "site_subject_ids",
    "subject_ids",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
