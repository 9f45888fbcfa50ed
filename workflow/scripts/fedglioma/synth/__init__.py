"""Built-in synthetic multi-site glioma cohort (demo data; synthetic, not for clinical conclusions).

Heads are built around nilearn's bundled MNI152 2009 brain (skull, scalp, face,
neck added), rendered in native scanner space per site (own voxel size, slice
thickness, orientation, pose, intensity scale, gamma, noise, bias field) with
BraTS-labelled tumours whose appearance depends on IDH, 1p/19q, MGMT and grade
with documented strengths. See ``docs/synth.md``.

Public API::

    SiteSpec, default_site_specs(n_sites, seed), subject_ids(site_index, n)
    sample_labels(rng, prevalence), sample_case(spec, subject_index, seed, strengths, site_index=)
    synthesize_subject(spec, subject_index, seed, strengths, site_index=) -> SyntheticSubject
    generate_site(out_dir, spec, site_index, n_subjects, seed, strengths) -> Path
    generate_demo_site(out_dir, site_index, n_sites, n_subjects, seed, strengths) -> Path
    generate_cohort(out_dir, n_sites, subjects_per_site, seed, strengths) -> list[Path]

Light names (site specs, IDs, labels) import eagerly; the renderer and writer
load on first use, so ``from fedglioma.synth import subject_ids`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedglioma.synth.labels import DEFAULT_PREVALENCE, GRADE_STYLES, Labels, sample_labels
from fedglioma.synth.sites import SiteSpec, default_site_specs, site_name, subject_ids

_LAZY = {
    "DEFAULT_STRENGTHS": "fedglioma.synth.tumour",
    "TumourGeometry": "fedglioma.synth.tumour",
    "check_strengths": "fedglioma.synth.tumour",
    "template_seg": "fedglioma.synth.tumour",
    "SyntheticSubject": "fedglioma.synth.render",
    "sample_case": "fedglioma.synth.render",
    "synthesize_subject": "fedglioma.synth.render",
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
    "SiteSpec",
    "default_site_specs",
    "sample_labels",
    "site_name",
    "subject_ids",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
