"""What a site declares (skull-stripped, co-registered, template space): skips, checks, one route."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.constants import MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.preprocess import import_subject, register_atlas
from fedglioma.preprocess.common import brain_name, read_state, tumour_name
from fedglioma.preprocess.coregister import coregister
from fedglioma.preprocess.site_checks import template_grid_problem
from fedglioma.preprocess.skullstrip import skullstrip
from fedglioma.preprocess.templates import load_template, template_transform
from tests.unit.preprocess_helpers import dice, make_phantom, write_raw

SUB = "001"


@pytest.fixture(scope="module")
def sri24_to_mni(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("templates") / "SRI24_to_MNI152"
    template_transform("SRI24", "MNI152", out)
    return out


def test_template_transform_brings_sri24_onto_mni(sri24_to_mni) -> None:
    meta = json.loads((sri24_to_mni / "transform.json").read_text())
    # the packaged SRI24 has no real origin: before the transform the two brains do not even overlap
    assert meta["brain_dice_before"] < 0.5 and meta["brain_dice_after"] > 0.93
    assert sorted(p.name for p in sri24_to_mni.iterdir()) == ["transform.json", "transform.mat"]


def brats_like(tmp_path: Path) -> tuple[dict[str, Path], Path, np.ndarray]:
    """A skull-stripped subject on the SRI24 grid as BraTS stores it: LPS voxel order, origin (0, 239, 0).

    The images are the real SRI24 T1 brain (scaled per sequence), the tumour a sphere in the right hemisphere.
    """
    tpl = load_template("SRI24", resolution_mm=1.0)
    data = np.asarray(tpl.image.dataobj, np.float32)[:, ::-1, :]  # LAS (package) -> LPS (BraTS)
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    assert np.allclose(affine @ [0, 239, 0, 1], tpl.image.affine @ [0, 0, 0, 1])  # the same voxel, the same point
    ii, jj, kk = np.ogrid[:240, :240, :155]
    seg = (((ii - 150) ** 2 + (jj - 110) ** 2 + (kk - 80) ** 2) < 15**2).astype(np.uint8) * 2
    seg[(seg > 0) & (data == 0)] = 0
    raw = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(MODALITIES):
        raw[m] = tmp_path / f"x_{m}.nii.gz"
        nib.save(nib.Nifti1Image((data * (1 + 0.2 * i)).astype(np.int16), affine), raw[m])
    segp = tmp_path / "x_seg.nii.gz"
    nib.save(nib.Nifti1Image(seg, affine), segp)
    return raw, segp, (data > 0)


def test_sri24_site_skips_coregistration_skullstrip_and_registration(tmp_path, sri24_to_mni) -> None:
    raw, seg, _ = brats_like(tmp_path / "raw")
    decl = Declared(skull_stripped=True, space="SRI24")
    ids = {"site": "BraTS", "subject": SUB}
    s = tmp_path / "prep"
    import_subject(raw, seg, [1, 2, 4], s / "01", declared=decl, **ids)
    coregister(s / "01", s / "02", declared=decl, **ids)
    skullstrip(s / "02", s / "03", declared=decl, **ids)
    register_atlas(s / "03", s / "04", declared=decl, template_transform=sri24_to_mni, resolution_mm=2.0, **ids)
    state = read_state(s / "04", **ids)
    skipped = {r["name"]: r.get("reason", "") for r in state.steps if r.get("skipped")}
    assert set(skipped) == {"coregister", "skullstrip", "register_atlas"}
    assert "SRI24" in skipped["coregister"] and "SRI24_to_MNI152" in skipped["register_atlas"]
    assert state.step("import")["declared"] == {"skull_stripped": True, "coregistered": True, "space": "SRI24"}
    atlas = state.transforms["atlas"]
    assert atlas["template_transform"] == "SRI24_to_MNI152" and (s / atlas["inverse"][0]).is_file()
    mni = load_template("MNI152", resolution_mm=2.0)
    brain = nib.load(s / "04" / brain_name(SUB))
    assert brain.shape == mni.mask.shape
    assert dice(np.asarray(brain.dataobj), np.asarray(mni.mask.dataobj)) > 0.93
    tumour = np.asarray(nib.load(s / "04" / tumour_name(SUB)).dataobj) > 0
    assert tumour.sum() * 8 / 1000 == pytest.approx(4 / 3 * np.pi * 15**3 / 1000, rel=0.35)  # ml, through the affine


def test_register_atlas_in_other_space_needs_the_template_transform(tmp_path) -> None:
    raw, seg, _ = brats_like(tmp_path / "raw")
    decl = Declared(skull_stripped=True, space="SRI24")
    ids = {"site": "BraTS", "subject": SUB}
    import_subject(raw, seg, [1, 2, 4], tmp_path / "01", declared=decl, **ids)
    skullstrip(tmp_path / "01", tmp_path / "03", declared=decl, **ids)
    with pytest.raises(ConfigError, match="SRI24_to_MNI152 template transform"):
        register_atlas(tmp_path / "03", tmp_path / "04", declared=decl, **ids)
    assert not (tmp_path / "04").exists()


def test_declared_template_space_off_grid_fails_at_import(tmp_path) -> None:
    ph = make_phantom(3, seed=2, skull=False)
    raw, seg = write_raw(tmp_path / "raw", ph)
    with pytest.raises(InputError, match="declared space SRI24") as exc:
        import_subject(raw, seg, [1, 2, 4], tmp_path / "01", declared=Declared(skull_stripped=True, space="SRI24"),
                       site="UPENN", subject=SUB)
    text = str(exc.value)
    assert "UPENN" in text and SUB in text and "set space to native" in text and "T1" in text
    assert not (tmp_path / "01").exists()


def test_declared_template_space_with_shifted_origin_fails(tmp_path) -> None:
    tpl = load_template("SRI24", resolution_mm=1.0)
    shifted = tpl.image.affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 20.0]
    why = template_grid_problem(nib.Nifti1Image(np.zeros((240, 240, 155), np.float32), shifted), "SRI24")
    assert why is not None and "20.0 mm" in why
    assert template_grid_problem(tpl.image, "SRI24") is None


def test_declared_skull_stripped_with_skull_fails_at_import(tmp_path) -> None:
    ph = make_phantom(3, seed=3)  # head with skull
    raw, seg = write_raw(tmp_path / "raw", ph)
    with pytest.raises(InputError, match="a skull seems present") as exc:
        import_subject(raw, seg, [1, 2, 4], tmp_path / "01", declared=Declared(skull_stripped=True),
                       site="EGD", subject=SUB)
    assert "set skull_stripped to no" in str(exc.value)
    assert not (tmp_path / "01").exists()


def test_declared_coregistered_copies_aligned_sequences(tmp_path) -> None:
    ph = make_phantom(3, seed=4, skull=False)
    raw, seg = write_raw(tmp_path / "raw", ph)
    ids = {"site": "UCSF", "subject": SUB}
    import_subject(raw, seg, [1, 2, 4], tmp_path / "01", declared=Declared(coregistered=True), **ids)
    coregister(tmp_path / "01", tmp_path / "02", declared=Declared(coregistered=True), **ids)
    rec = read_state(tmp_path / "02", **ids).step("coregister")
    assert rec["skipped"] and rec["reason"] == "site declared coregistered"
    assert not (tmp_path / "02" / "xfm").exists()


def test_unknown_space_names_the_known_ones(tmp_path) -> None:
    from fedglioma.config import load_sites

    with pytest.raises(ConfigError, match="unknown space 'Talairach'; known spaces: native, MNI152, SRI24"):
        Declared(space="Talairach")
    tsv = tmp_path / "sites.tsv"
    tsv.write_text("site\trole\tpath\tspace\nA\ttrain\ta\tTalairach\nX\texternal\tx\tnative\n")
    with pytest.raises(InputError, match="site A, .*row 2, column space: 'Talairach' is not one of \\['native', "
                       "'MNI152', 'SRI24'\\]. Fix: use one of native, MNI152, SRI24"):
        load_sites(tsv)


# --------------------------------------------------------------------------- one route


@pytest.mark.parametrize("step,command", [("coregister", "coregister"), ("skullstrip", "skullstrip"),
                                          ("register_atlas", "register-atlas"), ("n4", "n4"),
                                          ("normalise", "normalise")])
def test_subcommand_and_rule_reach_the_step_the_same_way(tmp_path, monkeypatch, step, command) -> None:
    """`fedglioma <step> ... --sites sites.tsv` calls the step function with exactly what the rule's entry passes."""
    import importlib

    from fedglioma.cli import main
    from fedglioma.config import load_sites
    from fedglioma.preprocess import steps

    tsv = tmp_path / "sites.tsv"
    tsv.write_text("site\trole\tpath\tskull_stripped\tspace\nBraTS\ttrain\ta\tyes\tSRI24\nX\texternal\tx\tno\tnative\n")
    row = {r.site: r for r in load_sites(tsv)}["BraTS"]
    calls: list[tuple[tuple, dict]] = []
    module, name = steps.STEPS[step].split(":")
    real = getattr(importlib.import_module(module), name)

    @functools.wraps(real)  # same signature: run_step passes what the real step accepts
    def record(*a, **k):
        calls.append((a, k))

    monkeypatch.setattr(importlib.import_module(module), name, record)
    section = {"register_atlas": "atlas"}.get(step, step)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"sites: {tsv}\n")
    from fedglioma.settings import load_config

    key = {"skullstrip": "mode=accurate", "normalise": "method=percentile"}.get(step, "iterations=[1]")
    params = load_config(cfg, overrides=[f"preprocess.{section}.{key}"]).model_dump(mode="json")["preprocess"][section]
    (tmp_path / "in").mkdir()
    xfm = ["--template-transform", str(tmp_path / "t")] if step == "register_atlas" else []
    assert main(["preprocess", command, str(tmp_path / "in"), str(tmp_path / "out"), "--site", "BraTS",
                 "--subject", SUB, "--sites", str(tsv), "--config", str(cfg),
                 "--set", f"preprocess.{section}.{key}", *xfm]) == 0
    # what the chain of rule preprocess_subject passes (fedglioma.preprocess.chain): params=the config section,
    # the row's declaration
    steps.run_step(step, tmp_path / "in", tmp_path / "out", site="BraTS", subject=SUB, params=params,
                   declared=row.declared, template_transform=(tmp_path / "t") if xfm else None)
    assert len(calls) == 2 and calls[0] == calls[1]
    if step in ("coregister", "skullstrip", "register_atlas"):
        assert calls[0][1]["declared"] == Declared(skull_stripped=True, space="SRI24")


# --------------------------------------------------------------------------- labels that are not tumour


def test_resection_cavity_label_is_left_out_of_the_whole_tumour(tmp_path) -> None:
    """BraTS 2024 post-treatment masks (BraTS 2023+ naming) hold 4 = resection cavity: not tumour, not an error."""
    from fedglioma.config import load_sites
    from fedglioma.preprocess.importing import whole_tumour

    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, :3] = [1, 2, 3]
    seg[1, 1, 1] = 4
    wt = whole_tumour(seg, [1, 2, 3], non_tumour_labels=[4])
    assert wt.sum() == 3 and wt[1, 1, 1] == 0
    with pytest.raises(InputError, match=r"label value\(s\) \[4\].*non_tumour_labels"):
        whole_tumour(seg, [1, 2, 3], site="S", subject=SUB)
    with pytest.raises(ConfigError, match="both"):
        whole_tumour(seg, [1, 2, 3, 4], non_tumour_labels=[4])
    tsv = tmp_path / "sites.tsv"
    tsv.write_text("site\trole\tlayout\tpath\tnon_tumour_labels\nA\ttrain\tbrats2023\ta\t\nB\ttrain\tbrats2023\tb\tnone\n"
                   "C\ttrain\tupenn_gbm\tc\t5,6\nX\texternal\tbrats2021\tx\t\n")
    rows = {r.site: r.non_tumour_labels for r in load_sites(tsv)}
    assert rows == {"A": (4,), "B": (), "C": (5, 6), "X": ()}
