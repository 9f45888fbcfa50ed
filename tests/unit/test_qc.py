"""QC measures and flags (fedglioma.preprocess.qc, qc_measures) on a synthetic subject in template space.

A brain-extracted phantom (3 mm, nilearn MNI152 tissue maps, tumour in the right hemisphere) is put on the
3 mm MNI152 template grid as a correctly processed subject; each failure mode of issue 14 is made from it
in memory (registration off by 15 mm or 20 degrees, half or empty brain mask, two sequences swapped) and
must be flagged for the right reason, while the correct subject passes. The same checks on the real
exams are in tests/integration/test_real_exam.py; the calibration is in docs/preprocessing.md.
"""

from __future__ import annotations

import importlib

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from fedglioma.errors import ConfigError
from fedglioma.preprocess.common import State, Subject
from fedglioma.preprocess.templates import load_template
from fedglioma.settings import QcThresholds
from tests.unit.preprocess_helpers import make_phantom, move_data

qc_mod = importlib.import_module("fedglioma.preprocess.qc")
measures = importlib.import_module("fedglioma.preprocess.qc_measures")

SITE, SUB = "SiteQ", "q01"


@pytest.fixture(scope="module")
def template():
    tpl = load_template("MNI152", resolution_mm=3.0)
    return tpl, measures.tissue_maps("MNI152", tpl.image, tpl.mask)


@pytest.fixture(scope="module")
def good(template) -> Subject:
    """The phantom resampled onto the 3 mm template grid: a correctly registered, skull-stripped subject."""
    tpl, _ = template
    ph = make_phantom(3, seed=3, skull=False)
    grid = (tpl.image.shape[:3], tpl.image.affine)

    def on_grid(data: np.ndarray, order: int) -> np.ndarray:
        return np.asarray(resample_from_to(nib.Nifti1Image(data.astype(np.float32), ph.affine), grid, order=order).dataobj)

    brain = on_grid(ph.brain, 1) > 0.5
    images = {m: nib.Nifti1Image(np.where(brain, on_grid(ph.images[m], 1), 0).astype(np.float32), grid[1])
              for m in ph.images}
    return Subject(images=images, tumour=nib.Nifti1Image((on_grid(ph.seg > 0, 1) > 0.5).astype(np.uint8), grid[1]),
                   brain=nib.Nifti1Image(brain.astype(np.uint8), grid[1]),
                   state=State(site=SITE, subject=SUB, has_tumour=True, has_brain=True))


def _row(template, sub: Subject, **thresholds: float) -> dict:
    tpl, tissue = template
    return qc_mod.qc_metrics(sub, None, sub, tpl.image, tpl.mask, thresholds or None, tissue)


def _rigid(rot_deg: float, axis: int, shift_mm: float, centre: np.ndarray) -> np.ndarray:
    a = np.deg2rad(rot_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    m[:3, 3] = centre - m[:3, :3] @ centre
    m[axis, 3] += shift_mm
    return m


def _moved(sub: Subject, world: np.ndarray) -> Subject:
    """The subject's template-space images and masks displaced by ``world``: a registration that is off."""
    aff = sub.reference.affine

    def mv(img: nib.Nifti1Image, label: bool) -> nib.Nifti1Image:
        d = move_data(np.asarray(img.dataobj, np.float32), aff, world, order=1)
        return nib.Nifti1Image((d > 0.5).astype(np.uint8) if label else d.astype(np.float32), aff)

    assert sub.tumour is not None and sub.brain is not None
    return Subject(images={m: mv(i, False) for m, i in sub.images.items()}, tumour=mv(sub.tumour, True),
                   brain=mv(sub.brain, True), state=sub.state)


def _with_brain(sub: Subject, brain: np.ndarray) -> Subject:
    assert sub.brain is not None
    return Subject(images=sub.images, tumour=sub.tumour, brain=nib.Nifti1Image(brain.astype(np.uint8), sub.brain.affine),
                   state=sub.state)


def test_correct_subject_passes_with_margin(template, good) -> None:
    row = _row(template, good, brain_ml_max=2500)  # the phantom has nilearn's generous 1.9 L brain mask
    assert not row["flagged"], row["reasons"]
    th = QcThresholds().model_dump()
    assert row["template_dice"] > th["min_template_dice"] + 0.1
    assert row["ventricle_contrast"] > th["min_ventricle_contrast"] + 0.5
    assert row["sequence_contrast"] > 0.5 and set(row["contrast_scores"]) == {
        "T1>T2", "T1c>T2", "T1>FLAIR", "T1c>FLAIR", "FLAIR>T2"}
    assert row["tumour_in_brain"] == 1.0 and row["snr"] is None


@pytest.mark.parametrize(("rot", "shift"), [(0.0, 15.0), (20.0, 0.0)], ids=["shift15mm", "rot20deg"])
@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "z"])
def test_registration_off_is_flagged(template, good, axis: int, rot: float, shift: float) -> None:
    assert good.brain is not None
    centre = nib.affines.apply_affine(good.brain.affine, np.argwhere(np.asarray(good.brain.dataobj) > 0).mean(0))
    row = _row(template, _moved(good, _rigid(rot, axis, shift, centre)), brain_ml_max=2500)
    assert row["flagged"] and row["ventricle_contrast"] < QcThresholds().min_ventricle_contrast, row
    assert any("registration" in r for r in row["reasons"])


@pytest.mark.parametrize("axis", [0, 2], ids=["left-right", "inferior-superior"])
def test_half_brain_mask_is_flagged(template, good, axis: int) -> None:
    assert good.brain is not None
    brain = np.asarray(good.brain.dataobj) > 0
    cut = int(round(np.argwhere(brain)[:, axis].mean()))
    half = brain.copy()
    half[(slice(None),) * axis + (slice(cut, None),)] = False
    row = _row(template, _with_brain(good, half), brain_ml_max=2500)
    assert row["flagged"] and row["template_dice"] < QcThresholds().min_template_dice, row
    assert any("partial brain mask" in r for r in row["reasons"])


def test_empty_brain_mask_is_flagged_not_a_crash(template, good) -> None:
    row = _row(template, _with_brain(good, np.zeros(good.reference.shape, bool)))
    assert row["flagged"] and row["brain_volume_ml"] == 0 and row["template_dice"] == 0
    assert row["ventricle_contrast"] is None and row["sequence_contrast"] is None
    assert "empty brain mask" in row["reasons"]


@pytest.mark.parametrize("pair", [("T1", "T2"), ("T1c", "FLAIR"), ("T2", "FLAIR"), ("T1", "FLAIR"), ("T1c", "T2")],
                         ids=lambda p: "-".join(p))
def test_swapped_sequences_are_flagged(template, good, pair: tuple[str, str]) -> None:
    a, b = pair
    images = {**good.images, a: good.images[b], b: good.images[a]}
    row = _row(template, Subject(images=images, tumour=good.tumour, brain=good.brain, state=good.state),
               brain_ml_max=2500)
    assert row["flagged"], row
    assert row["sequence_contrast"] < QcThresholds().min_sequence_contrast
    assert any("look swapped" in r for r in row["reasons"]) or (a == "T1c" and any("registration" in r for r in row["reasons"]))


def test_identical_contrasts_are_not_a_swap() -> None:
    """Two sequences with the same tissue contrast (the real exams' stand-in series) score about 0, not < 0."""
    t1 = {"wm": 0.5, "gm": 0.1, "csf": -1.0}
    scores = measures.contrast_scores({"T1": t1, "T1c": t1, "T2": t1, "FLAIR": t1})
    assert scores and all(v == 0 for v in scores.values())
    assert measures.contrast_scores({"T1": t1, "T1c": None, "T2": None, "FLAIR": None}) == {}


def test_unknown_threshold_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="qc.thresholds.min_similarity: extra inputs are not permitted"):
        qc_mod.check_thresholds({"min_similarity": 0.5})
    assert qc_mod.check_thresholds({"min_snr": 3})["min_snr"] == 3.0
