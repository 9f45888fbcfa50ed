"""Synthetic demo cohort: determinism, label logic, site heterogeneity, validation, learnability."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from fedglioma.errors import ConfigError
from fedglioma.synth import (
    DEFAULT_STRENGTHS,
    GridSpec,
    Labels,
    SiteSpec,
    default_site_specs,
    demo_site_row,
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
from fedglioma.synth.cohort import layout_labels, site_clinical, write_subject
from fedglioma.synth.labels import format_grade
from fedglioma.synth.render import CAVITY, read_ants_affine, template_grid
from fedglioma.synth.sites import LAYOUTS, site_subject_ids
from fedglioma.synth.tumour import sample_tumour

REPO = Path(__file__).resolve().parents[2]
SEED = 2025
#: SRI24 mm <- MNI152 mm (RAS): an ANTs affine registration of the two templates (the template_transform rule's
#: result, rounded), so the unit tests need no registration.
SRI24_FROM_MNI = np.array(
    [
        [0.9171, -0.0085, -0.0022, -119.0832],
        [-0.0110, 0.9299, -0.1874, 125.3210],
        [-0.0063, 0.1919, 0.8332, 71.8124],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
TRANSFORMS = {"SRI24": SRI24_FROM_MNI}
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


#: A coarse raw site with one grid per sequence (2D-like, own orientation each) and head motion between them.
SMALL_RAW = SiteSpec(
    name="TinyRaw",
    voxel_size=(3.0, 3.0, 5.0),
    fov_mm=(216.0, 216.0, 150.0),
    orientation="RPS",
    modality_grids={
        "T1": GridSpec((2.5, 2.5, 5.5), (220.0, 220.0, 154.0), "LPS"),
        "T2": GridSpec((2.0, 2.0, 5.0), (200.0, 230.0, 150.0), "LAS"),
        "FLAIR": GridSpec((3.0, 3.0, 6.0), (220.0, 240.0, 156.0), "PLI"),
    },
    sequence_motion=1.5,
    layout="upenn_gbm",
    id_style="hospital",
    clinical_style="hospital",
    grade_style="who_roman",
)


@pytest.fixture(scope="module")
def site_subjects():
    """Subject 0 of each of the six default sites (rendered once; 1 mm template grids)."""
    specs = default_site_specs(6, SEED)
    return specs, [
        synthesize_subject(spec, 0, SEED, site_index=i, template_transforms=TRANSFORMS) for i, spec in enumerate(specs)
    ]


def test_subject_ids_are_deterministic_and_unique():
    assert subject_ids(0, 3) == ["BraTS2021_01001", "BraTS2021_01002", "BraTS2021_01003"]
    specs = default_site_specs(6, SEED)
    assert [site_subject_ids(s, i, 1)[0] for i, s in enumerate(specs)] == [
        "BraTS2021_01001",
        "BraTS-GLI-02001-000",
        "UCSF-PDGM-3001",
        "UPENN-GBM-04001_11",
        "EGD-5001",
        "HOSP-06001",
    ]
    ids = [sid for i, s in enumerate(default_site_specs(12, SEED)) for sid in site_subject_ids(s, i, 20)]
    assert len(set(ids)) == len(ids)


def test_default_sites():
    specs = default_site_specs(6, SEED)
    assert [s.name for s in specs] == ["SiteA", "SiteB", "SiteC", "SiteD", "SiteE", "External"]
    assert [s.role for s in specs].count("external") == 1 and specs[-1].role == "external"
    assert specs == default_site_specs(6, SEED)
    assert specs[0].intensity_scale != default_site_specs(6, SEED + 1)[0].intensity_scale
    for spec in specs:
        spec.validate()
    assert [s.layout for s in specs] == ["brats2021", "brats2023", "ucsf_pdgm", "upenn_gbm", "egd", "upenn_gbm"]
    assert [s.space for s in specs] == ["SRI24", "SRI24", "native", "SRI24", "MNI152", "native"]
    assert [s.skull_stripped for s in specs] == [True] * 5 + [False]


def test_sites_tsv_and_config_describe_the_demo_sites():
    """config/sites.tsv rows are what the generator writes (the workflow checks the same before running)."""
    import pandas as pd
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    rows = pd.read_csv(REPO / "config" / "sites.tsv", sep="\t", dtype=str, keep_default_na=False)
    specs = default_site_specs(len(rows), cfg["demo"]["seed"])
    for spec, row in zip(specs, rows.to_dict(orient="records"), strict=True):
        assert row["role"] == spec.role
        want = demo_site_row(spec, row["site"], cfg["demo"]["out"])
        assert {k: row[k] for k in want} == want, row["site"]


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


def _on_ref_grid(s, m: str) -> bool:
    return s.images[m].shape == s.seg.shape and np.allclose(s.affines[m], s.affine)


def _brain_on(s, m: str) -> np.ndarray:
    """The brain mask on modality ``m``'s grid (nearest-neighbour where that grid is not the T1c's)."""
    if _on_ref_grid(s, m):
        return s.brain_mask > 0
    from nibabel.processing import resample_from_to

    moved = resample_from_to(nib.Nifti1Image(s.brain_mask, s.affine), (s.images[m].shape, s.affines[m]), order=0)
    return np.asarray(moved.dataobj) > 0


def test_sites_have_their_datasets_grids(site_subjects):
    specs, subs = site_subjects
    sri_shape, sri_affine = template_grid("SRI24")
    mni_shape, mni_affine = template_grid("MNI152")
    assert sri_shape == (240, 240, 155) and mni_shape == (197, 233, 189)
    for spec, s in zip(specs, subs, strict=True):
        for m, img in s.images.items():
            if spec.space == "SRI24":
                assert img.shape == sri_shape and np.allclose(s.affines[m], sri_affine), (spec.name, m)
            elif spec.space == "MNI152":
                assert img.shape == mni_shape and np.allclose(s.affines[m], mni_affine), (spec.name, m)
            else:
                g = spec.grid_spec(m)
                assert img.shape == g.shape and np.allclose(s.affines[m], g.affine()), (spec.name, m)
                assert nib.aff2axcodes(s.affines[m]) == tuple(g.orientation)
    ucsf = subs[2]
    assert np.allclose(np.sqrt((ucsf.affine[:3, :3] ** 2).sum(0)), 1.0)  # 1 mm isotropic, own grid and pose
    assert not np.allclose(ucsf.template_from_scanner, np.eye(4))
    # scanners differ in intensity
    stats = np.array([[np.median(s.images[m][_brain_on(s, m)]) for m in ("T1", "T2", "FLAIR")] for s in subs])
    for i in range(len(subs)):
        for j in range(i + 1, len(subs)):
            assert np.max(np.abs(np.log(stats[i] / stats[j]))) > 0.1, (specs[i].name, specs[j].name)


def test_sri24_sites_are_in_sri24_space_with_zero_background(site_subjects):
    """An SRI24 subject lies on the SRI24 grid, its brain where the SRI24 template's brain is, background 0."""
    from fedglioma.preprocess.templates import load_template

    specs, subs = site_subjects
    template = load_template("SRI24", resolution_mm=1.0)
    sri_brain = np.asarray(template.mask.dataobj) > 0
    for spec, s in zip(specs, subs, strict=True):
        if spec.space != "SRI24":
            continue
        brain = s.brain_mask > 0
        dice = 2.0 * (brain & sri_brain).sum() / (brain.sum() + sri_brain.sum())
        assert dice > 0.9, (spec.name, dice)
        for m, img in s.images.items():
            assert np.all(img[~brain] == 0), (spec.name, m)
            assert np.mean(img[brain] > 0) > 0.99


def test_external_sequences_each_on_their_own_grid(site_subjects):
    specs, subs = site_subjects
    ext = subs[-1]
    grids = {m: (ext.images[m].shape, tuple(np.round(ext.affines[m], 4).ravel())) for m in ext.images}
    assert len(set(grids.values())) == 4
    assert len({nib.aff2axcodes(a) for a in ext.affines.values()}) == 4
    for m, a in ext.affines.items():
        zooms = np.sqrt((a[:3, :3] ** 2).sum(0))
        assert 5.0 <= zooms[2] <= 6.0 and 0.4 <= zooms[0] <= 1.0 and 0.4 <= zooms[1] <= 1.0, (m, zooms)
        assert nib.aff2axcodes(a)[2] in ("S", "I")  # axial slices
    assert ext.seg.shape == ext.images["T1c"].shape and np.allclose(ext.affine, ext.affines["T1c"])
    # raw: the head around the brain (scalp fat, marrow) is there
    t1c, brain = ext.images["T1c"], ext.brain_mask > 0
    assert np.mean(t1c[~brain] > 0.5 * np.median(t1c[brain])) > 0.02


def test_subject_content(site_subjects):
    specs, subs = site_subjects
    for spec, s in zip(specs, subs, strict=True):
        assert set(np.unique(s.seg)) <= {0, 1, 2, 4, CAVITY}
        tumour = np.isin(s.seg, (1, 2, 4))
        assert tumour.sum() * abs(np.linalg.det(s.affine[:3, :3])) > 250  # mm^3
        assert np.all(s.brain_mask[s.seg > 0] == 1)
        vol = s.brain_mask.sum() * abs(np.linalg.det(s.affine[:3, :3])) / 1000.0
        scale = abs(np.linalg.det(SRI24_FROM_MNI[:3, :3])) if spec.space == "SRI24" else 1.0
        assert 1600 * scale < vol < 2200 * scale, (spec.name, vol)  # ml, adult brain incl. ventricles
        for img in s.images.values():
            assert img.dtype == np.float32 and img.min() >= 0
        brain = s.brain_mask > 0
        if spec.skull_stripped:
            assert all(np.all(img[~brain] == 0) for img in s.images.values()), spec.name
        else:  # head outside the brain (scalp fat, marrow) is present: real skull stripping work
            t1c = s.images["T1c"]
            assert np.mean(t1c[~brain] > 0.5 * np.median(t1c[brain])) > 0.02
        # edema is FLAIR/T2 hyperintense relative to the brain around the tumour (the bias field varies)
        edema = s.seg == 2
        ring = ndi.binary_dilation(s.seg > 0, iterations=8) & brain & (s.seg == 0)
        for m, factor in (("FLAIR", 1.2), ("T2", 1.0)):
            if _on_ref_grid(s, m):
                img = s.images[m]
                assert np.median(img[edema]) > factor * np.median(img[ring]), (spec.name, m)
        if (s.seg == 4).sum() > 20 and _on_ref_grid(s, "T1"):
            assert np.median(s.images["T1c"][s.seg == 4]) > 1.3 * np.median(s.images["T1"][s.seg == 4])


def test_brats2023_cavity_is_label_4_and_not_tumour():
    from fedglioma.synth.render import _streams

    spec = default_site_specs(6, SEED)[1]
    # the cavity draw is the first of the subject's cavity stream: find a subject with one without rendering
    with_cavity = [j for j in range(20) if _streams(SEED, 1, j)[5].random() < spec.cavity_fraction]
    assert 3 <= len(with_cavity) <= 12, with_cavity
    cavity = synthesize_subject(spec, with_cavity[0], SEED, site_index=1, template_transforms=TRANSFORMS)
    assert cavity.cavity
    written = layout_labels(cavity.seg, "brats2023")
    assert set(np.unique(written)) <= {0, 1, 2, 3, 4} and (written == 4).any()
    assert np.array_equal(written == 3, cavity.seg == 4)  # enhancing tumour is 3 in BraTS 2023
    assert np.array_equal(np.isin(written, (1, 2, 3)), np.isin(cavity.seg, (1, 2, 4)))  # the cavity is not tumour
    hole = cavity.seg == CAVITY
    assert np.median(cavity.images["T2"][hole]) > np.median(cavity.images["T2"][cavity.brain_mask > 0])
    assert np.median(cavity.images["FLAIR"][hole]) < np.median(cavity.images["FLAIR"][cavity.seg == 2])
    assert set(np.unique(layout_labels(cavity.seg, "egd"))) == {0, 1}
    assert 5 not in layout_labels(cavity.seg, "brats2021") and 3 not in layout_labels(cavity.seg, "brats2021")


def test_each_layout_written_is_found_by_discover(tmp_path, site_subjects):
    from fedglioma.io.layouts import DEFAULT_TUMOUR_LABELS, discover

    specs, subs = site_subjects
    assert set(LAYOUTS) == {s.layout for s in specs}
    for spec, s in zip(specs, subs, strict=True):
        site_dir = tmp_path / spec.name
        write_subject(site_dir, s, spec.layout)
        found = discover(site_dir, spec.layout, spec.name)
        assert not found.problems and [x.subject for x in found.subjects] == [s.subject], spec.name
        sub = found.subjects[0]
        assert sub.seg is not None
        for m, p in sub.images.items():
            img = nib.load(p)
            assert img.get_data_dtype() == np.int16 and img.shape == s.images[m].shape
            assert np.allclose(img.affine, s.affines[m], atol=1e-4)
        seg = np.asarray(nib.load(sub.seg).dataobj)
        assert seg.dtype == np.uint8 and set(np.unique(seg)) - {0} <= set(DEFAULT_TUMOUR_LABELS[spec.layout]) | (
            {4} if spec.layout == "brats2023" else set()
        )


def test_clinical_tables_harmonise_to_the_intended_labels():
    """Each default site's table (its dataset's columns and spellings) maps to the true labels through
    config/config.yaml's clinical.sites.<site> mapping: missing stays missing, nothing else is lost."""
    import io

    import pandas as pd
    import yaml

    from fedglioma.constants import TASKS
    from fedglioma.io.clinical import harmonise, site_mapping
    from fedglioma.synth.clinical import STYLES

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    texts = {}
    for i, spec in enumerate(default_site_specs(6, SEED)):
        text, recorded = site_clinical(spec, i, 60, SEED)
        texts[spec.name] = text
        style = STYLES[spec.clinical_style]
        table = pd.read_csv(io.StringIO(text), sep=style.separator, dtype=str, keep_default_na=False)
        assert list(table.columns) == style.header
        assert table[style.id_column].tolist() == site_subject_ids(spec, i, 60)
        got = harmonise(table, site_mapping(cfg["clinical"], spec.name), site=spec.name, file="x")
        want = pd.DataFrame(recorded, dtype=float)
        for t in TASKS:
            assert np.array_equal(got[t].to_numpy(), want[t].to_numpy(), equal_nan=True), (spec.name, t)
        labels = [sample_case(spec, j, SEED, site_index=i)[0].as_dict() for j in range(60)]
        for t in TASKS:  # what is recorded is the truth (1p/19q of IDH-wildtype: intact where recorded)
            for rec, lab in zip(recorded, labels, strict=True):
                if rec[t] is not None:
                    assert rec[t] == (lab[t] if lab[t] is not None else 0), (spec.name, t)
    # the spellings the tables cover
    assert "CNS WHO grade 4" in texts["SiteB"] and "\tIV\n" not in texts["SiteB"]
    assert ",IV," in texts["SiteE"] or texts["SiteE"].rstrip().endswith(",IV")
    assert "WHO grade IV" in texts["External"] and "IDH-wildtype" in texts["SiteA"]
    assert "\twildtype\tintact\t" in texts["SiteB"] and ",wildtype,intact," in texts["SiteC"]
    assert "indeterminate" in texts["SiteC"] and "n.d." in texts["External"] and "NOS/NEC" in texts["SiteD"]
    ext = pd.read_csv(io.StringIO(texts["External"]), dtype=str, keep_default_na=False)
    pct = pd.to_numeric(ext["MGMT promoter methylation (%)"], errors="coerce").dropna()
    assert (pct >= 10).any() and (pct < 10).any()


def test_config_holds_the_demo_clinical_mappings():
    import yaml

    from fedglioma.io.clinical import site_mapping
    from fedglioma.synth import demo_clinical_mapping

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for spec in default_site_specs(6, SEED):
        mine = site_mapping({"sites": {spec.name: demo_clinical_mapping(spec)}}, spec.name)
        assert site_mapping(cfg["clinical"], spec.name) == mine, spec.name


def test_clinical_thresholds_and_who2021_grades():
    import pandas as pd

    from fedglioma.io.clinical import harmonise, parse_grade, site_mapping

    assert parse_grade("CNS WHO grade 4") == 4.0 and parse_grade("WHO CNS grade 3") == 3.0
    table = pd.DataFrame({"subject": list("abcdef"), "MGMT": ["12.5", "9.9", "10", "methylated", "n.d.", "3 %"]})
    mapping = site_mapping({"default": {"thresholds": {"mgmt": 10}}}, "s")
    got = harmonise(table, mapping, site="s", file="x")["mgmt"].tolist()
    assert got[:4] == [1.0, 0.0, 1.0, 1.0] and np.isnan(got[4]) and got[5] == 0.0


def test_read_ants_affine(tmp_path):
    """A transform.mat (ITK: fixed point -> moving point, LPS) reads as the same map in RAS mm."""
    import scipy.io

    a = np.array([[0.92, -0.01, 0.002], [-0.011, 0.93, 0.19], [0.006, -0.19, 0.83]])
    t, c = np.array([118.9, -124.8, 65.9]), np.array([0.0, 21.3, 10.6])
    path = tmp_path / "transform.mat"
    scipy.io.savemat(path, {"AffineTransform_double_3_3": np.concatenate([a.ravel(), t])[:, None], "fixed": c[:, None]},
                     format="4")
    m = read_ants_affine(path)
    lps = np.array([10.0, -20.0, 30.0])
    moved = a @ (lps - c) + t + c
    ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
    assert np.allclose(m @ ras, [-moved[0], -moved[1], moved[2], 1.0])
    try:
        import ants
    except ImportError:
        return
    tx = ants.read_transform(str(path))
    assert np.allclose(tx.apply_to_point(lps.tolist()), moved, atol=1e-4)


def test_site_files_are_byte_identical_for_a_seed(tmp_path):
    a = generate_site(tmp_path / "a", SMALL, 3, 2, SEED)
    b = generate_site(tmp_path / "b", SMALL, 3, 2, SEED)
    c = generate_site(tmp_path / "c", SMALL, 3, 2, SEED + 1)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    files = [k for k in da if k.endswith(".nii.gz")]
    assert files and all(da[k] != dc[k] for k in files)
    # layout, missing labels and missing segmentations
    assert "BraTS2021_04001/BraTS2021_04001_seg.nii.gz" in da  # subject 0 always has one
    assert "BraTS2021_04002/BraTS2021_04002_seg.nii.gz" not in da  # seg_fraction = 0
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
    img = nib.load(a / "BraTS2021_04001" / "BraTS2021_04001_t1.nii.gz")
    assert img.get_data_dtype() == np.int16 and nib.aff2axcodes(img.affine) == ("L", "P", "S")
    seg = np.asarray(nib.load(a / "BraTS2021_04001" / "BraTS2021_04001_seg.nii.gz").dataobj)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 4}


def test_raw_site_with_one_grid_per_sequence_is_deterministic(tmp_path):
    from fedglioma.io.layouts import discover

    a = generate_site(tmp_path / "a", SMALL_RAW, 5, 2, SEED)
    b = generate_site(tmp_path / "b", SMALL_RAW, 5, 2, SEED)
    assert _digest(a) == _digest(b)
    found = discover(a, "upenn_gbm", "TinyRaw")
    assert not found.problems and [s.subject for s in found.subjects] == ["HOSP-06001", "HOSP-06002"]
    sub = found.subjects[0]
    imgs = {m: nib.load(p) for m, p in sub.images.items()}
    assert len({(i.shape, tuple(np.round(i.affine, 3).ravel())) for i in imgs.values()}) == 4
    seg = nib.load(sub.seg)
    assert seg.shape == imgs["T1c"].shape and np.allclose(seg.affine, imgs["T1c"].affine)
    assert (a / "pathology_export.csv").is_file() and (a / "synthetic.json").is_file()


def test_sri24_site_is_deterministic(tmp_path):
    spec = default_site_specs(6, SEED)[3]  # UPENN-GBM: SRI24
    a = generate_site(tmp_path / "a", spec, 3, 1, SEED, template_transforms=TRANSFORMS)
    b = generate_site(tmp_path / "b", spec, 3, 1, SEED, template_transforms=TRANSFORMS)
    assert _digest(a) == _digest(b)
    assert (a / "UPENN-GBM-04001_11" / "UPENN-GBM-04001_11_T1GD.nii.gz").is_file()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda out: generate_site(out, SMALL, 0, 0, SEED), "n_subjects"),
        (lambda out: generate_site(out, SMALL, 0, -2, SEED), "n_subjects"),
        (lambda out: generate_site(out, SMALL, 0, 2, SEED, {"idh": 1.5}), "idh"),
        (lambda out: generate_site(out, SMALL, 0, 2, SEED, {"size": 0.5}), "demo.strengths.size: extra inputs"),
        (lambda out: generate_site(out, SMALL, 0, 2, SEED, layout="nnunet"), "layout"),
        (lambda out: generate_site(out, SMALL, 0, 2, -1), "seed"),
        (lambda out: generate_site(out, SiteSpec(name="X", orientation="LLS"), 0, 2, SEED), "orientation"),
        (lambda out: generate_site(out, SiteSpec(name="X", prevalence={"idh_mutant": 2}), 0, 2, SEED), "prevalence"),
        (lambda out: generate_demo_site(out, 6, 6, 2, SEED), "site_index"),
        (lambda out: generate_demo_site(out, 0, 6, 2, SEED), "SRI24-to-MNI152 template transform"),
        (lambda out: generate_site(out, SiteSpec(name="X", cavity_fraction=0.3), 0, 2, SEED), "brats2023"),
        (lambda out: generate_site(out, SiteSpec(name="X", space="MNI152", modality_grids={"T1": GridSpec()}), 0, 2,
                                   SEED), "modality_grids"),
        (lambda out: generate_site(out, SiteSpec(name="X", clinical_style="nope"), 0, 2, SEED), "clinical_style"),
        (lambda out: generate_site(out, SiteSpec(name="X", layout="ucsf_pdgm", id_style="egd"), 0, 2, SEED), "fit"),
        (lambda out: generate_cohort(out, 3, 2, SEED, {"grade": -0.1}), "grade"),
        (lambda out: generate_cohort(out, 3, 2, SEED), "template transform"),
        (lambda out: generate_cohort(out, 3, 0, SEED), "n_subjects"),
        (lambda out: generate_cohort(out, 3, 2, SEED, external_subjects=0), "n_subjects"),
    ],
)
def test_bad_parameters_fail_before_writing(tmp_path, call, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        call(out)
    assert not out.exists()


def test_cli_takes_the_demo_section_and_validates(tmp_path):
    """`fedglioma cohort synth-site` (the synth_site rule's step) reads demo.* from --config (--set overrides); a
    bad strength fails before anything is written."""
    from fedglioma.cli import main

    cfg = tmp_path / "config.yaml"
    cfg.write_text("sites: s.tsv\ndemo:\n  seed: 1\n")
    argv = ["cohort", "synth-site", "--config", str(cfg), "--site-dir", str(tmp_path / "s"), "--site-index", "0",
            "--n-sites", "2", "--n-subjects", "1"]
    assert main([*argv, "--set", "demo.strengths={idh: 2}"]) == 1
    assert not (tmp_path / "s").exists()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--config", str(cfg), "--out", str(tmp_path / "c"), "--n-sites", "3",
                              "--template-transform", "SRI24=results/templates/SRI24_to_MNI152"])
    assert (args.n_sites, args.out) == (3, str(tmp_path / "c"))
    assert args.template_transform == ["SRI24=results/templates/SRI24_to_MNI152"]


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


def test_demo_cohort_gives_every_auc_it_reports():
    """The demo config's cohort: every training site's validation split holds both classes of at least one
    marker (a validation AUC for model selection), and the external site holds both classes of IDH,
    1p/19q among IDH-mutant subjects, MGMT and grade 4 vs 2-3 (no external AUC is 'not estimable')."""
    from fedglioma.settings import load_config
    from fedglioma.synth.cohort import site_clinical
    from fedglioma.train.data import split_subjects

    cfg = load_config(REPO / "config" / "config.yaml").model_dump()
    demo, train = cfg["demo"], cfg["train"]
    specs = default_site_specs(6, demo["seed"])

    def two_classes(rows, task, where=lambda r: True):
        vals = {(r[task] >= 4 if task == "grade" else r[task]) for r in rows if r[task] is not None and where(r)}
        return len(vals) == 2

    for i, spec in enumerate(specs):
        n = demo["external_subjects"] if spec.role == "external" else demo["subjects_per_site"]
        _, recorded = site_clinical(spec, i, n, demo["seed"])
        by_id = dict(zip(site_subject_ids(spec, i, n), recorded, strict=True))
        if spec.role == "external":
            assert all(two_classes(recorded, t) for t in ("idh", "mgmt", "grade")), spec.name
            assert two_classes(recorded, "codeletion", lambda r: r["idh"] == 1), spec.name
            continue
        _, val = split_subjects(list(by_id), train["val_fraction"], train["seed"])
        rows = [by_id[s] for s in val]
        assert len(val) >= 2 and any(two_classes(rows, t) for t in ("idh", "mgmt", "grade")), (spec.name, val)
