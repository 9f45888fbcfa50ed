"""Synthetic demo cohort: determinism, label logic, site heterogeneity, validation, learnability."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.errors import ConfigError
from fedglioma.synth import (
    DEFAULT_STRENGTHS,
    Labels,
    SiteSpec,
    default_site_specs,
    generate_cohort,
    generate_demo_site,
    generate_site,
    head_model,
    sample_case,
    sample_labels,
    subject_ids,
    synthesize_subject,
    template_seg,
)
from fedglioma.synth.cli import register
from fedglioma.synth.labels import format_grade
from fedglioma.synth.tumour import sample_tumour

SEED = 2025
#: A coarse, small site so that whole-site writes stay fast.
SMALL = SiteSpec(
    name="Tiny",
    voxel_size=(3.0, 3.0, 4.0),
    fov_mm=(216.0, 216.0, 168.0),
    orientation="LPS",
    missing_labels=("MGMT",),
    seg_fraction=0.0,
    grade_style="roman",
)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def site_subjects():
    """Subject 0 of each of the six default sites (rendered once)."""
    specs = default_site_specs(6, SEED)
    return specs, [synthesize_subject(spec, 0, SEED, site_index=i) for i, spec in enumerate(specs)]


def test_subject_ids_are_deterministic_and_unique():
    assert subject_ids(0, 3) == ["BraTS2021_01000", "BraTS2021_01001", "BraTS2021_01002"]
    ids = [sid for i in range(6) for sid in subject_ids(i, 20)]
    assert len(set(ids)) == len(ids)


def test_default_sites():
    specs = default_site_specs(6, SEED)
    assert [s.name for s in specs] == ["SiteA", "SiteB", "SiteC", "SiteD", "SiteE", "External"]
    assert [s.role for s in specs].count("external") == 1 and specs[-1].role == "external"
    assert specs == default_site_specs(6, SEED)
    assert specs[0].intensity_scale != default_site_specs(6, SEED + 1)[0].intensity_scale
    for spec in specs:
        spec.validate()


def test_labels_respect_who_logic():
    rng = np.random.default_rng(0)
    draws = [sample_labels(rng) for _ in range(4000)]
    wildtype = [d for d in draws if d.idh == 0]
    mutant = [d for d in draws if d.idh == 1]
    assert all(d.codeletion is None for d in wildtype)  # no codeletion without IDH mutation
    assert all(d.codeletion in (0, 1) for d in mutant)
    assert all(d.grade in (2, 3) for d in mutant if d.codeletion == 1)
    assert np.mean([d.grade == 4 for d in wildtype]) > 0.7 > np.mean([d.grade == 4 for d in mutant])
    assert np.mean([d.mgmt for d in mutant]) > np.mean([d.mgmt for d in wildtype]) + 0.2
    assert 0.25 < len(mutant) / len(draws) < 0.45
    assert {format_grade(4, s) for s in ("arabic", "roman", "who", "who_roman", "g")} == {
        "4",
        "IV",
        "WHO grade 4",
        "WHO grade IV",
        "G4",
    }


def test_sites_differ_in_grid_orientation_and_intensity(site_subjects):
    specs, subs = site_subjects
    zooms = [tuple(np.round(np.sqrt((s.affine[:3, :3] ** 2).sum(0)), 3)) for s in subs]
    codes = [nib.aff2axcodes(s.affine) for s in subs]
    assert len(set(zooms)) == len(subs)
    assert len(set(codes)) == len(subs)
    assert codes == [tuple(spec.orientation) for spec in specs]
    stats = np.array([[np.median(s.images[m][s.brain_mask > 0]) for m in ("T1", "T2", "FLAIR")] for s in subs])
    for i in range(len(subs)):
        for j in range(i + 1, len(subs)):
            assert np.max(np.abs(np.log(stats[i] / stats[j]))) > 0.1, (specs[i].name, specs[j].name)


def test_subject_content(site_subjects):
    _, subs = site_subjects
    for s in subs:
        assert set(np.unique(s.seg)) <= {0, 1, 2, 4}
        assert (s.seg > 0).sum() > 50
        assert np.all(s.brain_mask[s.seg > 0] == 1)
        vol = s.brain_mask.sum() * abs(np.linalg.det(s.affine[:3, :3])) / 1000.0
        assert 1600 < vol < 2200  # ml, adult brain incl. ventricles
        for img in s.images.values():
            assert img.shape == s.seg.shape and img.dtype == np.float32 and img.min() >= 0
        t1, t2, flair = (s.images[m] for m in ("T1", "T2", "FLAIR"))
        brain, outside = s.brain_mask > 0, s.brain_mask == 0
        # head outside the brain (scalp fat, marrow) is present: real skull stripping work
        assert np.mean(t1[outside] > 0.5 * np.median(t1[brain])) > 0.02
        # edema is FLAIR/T2 hyperintense relative to the brain
        edema = s.seg == 2
        assert np.median(flair[edema]) > 1.2 * np.median(flair[brain & (s.seg == 0)])
        assert np.median(t2[edema]) > np.median(t2[brain & (s.seg == 0)])
        if (s.seg == 4).sum() > 20:
            assert np.median(s.images["T1c"][s.seg == 4]) > 1.3 * np.median(s.images["T1"][s.seg == 4])


def test_site_files_are_byte_identical_for_a_seed(tmp_path):
    a = generate_site(tmp_path / "a", SMALL, 3, 2, SEED)
    b = generate_site(tmp_path / "b", SMALL, 3, 2, SEED)
    c = generate_site(tmp_path / "c", SMALL, 3, 2, SEED + 1)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    files = [k for k in da if k.endswith(".nii.gz")]
    assert files and all(da[k] != dc[k] for k in files)
    # layout, missing labels and missing segmentations
    assert "BraTS2021_04000/BraTS2021_04000_seg.nii.gz" in da  # subject 0 always has one
    assert "BraTS2021_04001/BraTS2021_04001_seg.nii.gz" not in da  # seg_fraction = 0
    assert {k.rsplit("_", 1)[-1] for k in files} == {
        "t1.nii.gz",
        "t1ce.nii.gz",
        "t2.nii.gz",
        "flair.nii.gz",
        "seg.nii.gz",
    }
    lines = (a / "clinical.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["subject", "IDH", "1p19q", "MGMT", "grade"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == subject_ids(3, 2)
    assert all(r[3] == "" for r in rows)  # MGMT never recorded at this site
    assert all(r[4] in ("II", "III", "IV") for r in rows)
    assert all(r[2] == "" for r in rows if r[1] == "wildtype")
    img = nib.load(a / "BraTS2021_04000" / "BraTS2021_04000_t1.nii.gz")
    assert img.get_data_dtype() == np.int16 and nib.aff2axcodes(img.affine) == ("L", "P", "S")
    seg = np.asarray(nib.load(a / "BraTS2021_04000" / "BraTS2021_04000_seg.nii.gz").dataobj)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 4}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda out: generate_site(out, SMALL, 0, 0, SEED), "n_subjects"),
        (lambda out: generate_site(out, SMALL, 0, -2, SEED), "n_subjects"),
        (lambda out: generate_site(out, SMALL, 0, 2, SEED, {"idh": 1.5}), "idh"),
        (lambda out: generate_site(out, SMALL, 0, 2, SEED, {"size": 0.5}), "unknown phenotype"),
        (lambda out: generate_site(out, SMALL, 0, 2, SEED, layout="nnunet"), "layout"),
        (lambda out: generate_site(out, SMALL, 0, 2, -1), "seed"),
        (lambda out: generate_site(out, SiteSpec(name="X", orientation="LLS"), 0, 2, SEED), "orientation"),
        (lambda out: generate_site(out, SiteSpec(name="X", prevalence={"idh_mutant": 2}), 0, 2, SEED), "prevalence"),
        (lambda out: generate_demo_site(out, 6, 6, 2, SEED), "site_index"),
        (lambda out: generate_cohort(out, 3, 2, SEED, {"grade": -0.1}), "grade"),
        (lambda out: generate_cohort(out, 3, 0, SEED), "n_subjects"),
        (lambda out: generate_cohort(out, 3, 2, SEED, external_subjects=0), "n_subjects"),
    ],
)
def test_bad_parameters_fail_before_writing(tmp_path, call, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        call(out)
    assert not out.exists()


def test_cli_parses_and_validates(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "synth",
            "--out",
            str(tmp_path / "c"),
            "--sites",
            "3",
            "--subjects-per-site",
            "2",
            "--seed",
            "1",
            "--strength",
            "idh=0.2",
            "--strength",
            "grade=1",
        ]
    )
    assert (args.sites, args.subjects_per_site, args.strength) == (3, 2, ["idh=0.2", "grade=1"])
    bad = parser.parse_args(
        [
            "synth-site",
            "--out",
            str(tmp_path / "s"),
            "--site-index",
            "0",
            "--n-sites",
            "2",
            "--subjects",
            "1",
            "--seed",
            "1",
            "--strength",
            "idh=2",
        ]
    )
    with pytest.raises(ConfigError, match="idh"):
        bad.func(bad)
    assert not (tmp_path / "s").exists()


def _tumour_features(geom) -> list[float]:
    """Hand-crafted features from the tumour's own BraTS labels: enhancement, volumes, location."""
    seg, affine = template_seg(geom, head_model(), spacing=3.0)
    tc, et, wt = np.isin(seg, (1, 4)).sum(), (seg == 4).sum(), (seg > 0).sum()
    centre = np.argwhere(seg > 0).mean(axis=0) * 3.0 + affine[:3, 3]
    return [et / max(tc, 1), np.log1p(tc), np.log1p(wt), centre[1], abs(centre[0]), centre[2]]


def test_labels_are_learnable_but_not_trivially():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    specs = default_site_specs(6, SEED)
    x, y, external = [], [], []
    for i, spec in enumerate(specs):
        for j in range(60 if spec.role == "external" else 30):
            labels, geom = sample_case(spec, j, SEED, site_index=i)
            x.append(_tumour_features(geom))
            y.append((labels.idh, int(labels.grade == 4)))
            external.append(spec.role == "external")
    x, y, external = np.array(x), np.array(y), np.array(external)
    for k, task in enumerate(("idh", "grade4")):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[~external], y[~external, k])
        auc = roc_auc_score(y[external, k], model.predict_proba(x[external])[:, 1])
        assert 0.65 < auc < 0.98, (task, auc)


def test_zero_strength_makes_geometry_label_free():
    zero = dict.fromkeys(DEFAULT_STRENGTHS, 0.0)
    glioblastoma, oligo = Labels(idh=0, codeletion=None, mgmt=0, grade=4), Labels(idh=1, codeletion=1, mgmt=1, grade=2)
    for seed in range(5):
        a = sample_tumour(np.random.default_rng(seed), glioblastoma, zero, head_model())
        b = sample_tumour(np.random.default_rng(seed), oligo, zero, head_model())
        assert all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    a = sample_tumour(np.random.default_rng(0), glioblastoma, {"grade": 1.0}, head_model())
    b = sample_tumour(np.random.default_rng(0), oligo, {"grade": 1.0}, head_model())
    assert a.necrosis > 0.3 > b.necrosis and a.enhancement > b.enhancement and a.edema_scale > b.edema_scale
