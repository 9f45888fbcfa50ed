"""Pieces of `fedglioma predict patient` that need no model: marker calls, the brain-mask plausibility check, the
output-folder guard and the --series parser (the whole command runs in tests/integration/test_predict.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.errors import InputError
from fedglioma.predict.patient import _check_brain, _check_output, marker_calls, parse_series


def test_marker_calls_use_the_bundle_thresholds() -> None:
    probs = {"idh": 0.7, "codeletion": 0.2, "mgmt": 0.4, "grade": [0.1, 0.3, 0.6]}
    thresholds = {"idh": {"threshold": 0.5}, "codeletion": {"threshold": None, "reason": "one class only"},
                  "mgmt": {"threshold": 0.45}, "grade4": {"threshold": 0.55}}
    calls = marker_calls(probs, thresholds, {"codeletion": "idh_mutant"})
    assert calls["idh"]["call"] == "IDH-mutant" and calls["mgmt"]["call"] == "MGMT-unmethylated"
    assert calls["grade"]["call"] == "grade 4" and calls["grade"]["probability"] == 0.6
    assert calls["grade"]["probabilities"] == {"2": 0.1, "3": 0.3, "4": 0.6}
    assert calls["codeletion"]["call"] is None and calls["codeletion"]["no_call_reason"] == "one class only"
    assert "IDH-mutant" in calls["codeletion"]["note"]
    # at the threshold the call is positive, as the Youden threshold was counted (p >= t)
    assert marker_calls({**probs, "idh": 0.5}, thresholds, {})["idh"]["call"] == "IDH-mutant"


def _skullstrip_step(tmp_path: Path, voxels: int, zoom: float = 1.0) -> Path:
    subject_dir = tmp_path / "sub-P1"
    step = subject_dir / "03_skullstrip"
    step.mkdir(parents=True)
    mask = np.zeros((40, 40, 40), np.uint8)
    mask.reshape(-1)[:voxels] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([zoom, zoom, zoom, 1.0])), str(step / "sub-P1_desc-brain_mask.nii.gz"))
    (step / "state.json").write_text(json.dumps({"steps": [{"name": "skullstrip"}]}))
    return subject_dir


@pytest.mark.parametrize(("voxels", "zoom", "ok"), [(0, 1.0, False), (40 ** 3, 1.0, False), (20_000, 4.0, True),
                                                    (40 ** 3, 4.0, False)])
def test_brain_mask_must_be_plausible(tmp_path: Path, voxels: int, zoom: float, ok: bool) -> None:
    """An empty mask (a blank or a phantom) or one outside the QC range (not a head) stops the prediction."""
    subject_dir = _skullstrip_step(tmp_path, voxels, zoom)
    thresholds = {"brain_ml_min": 900.0, "brain_ml_max": 2200.0}
    if ok:
        assert _check_brain(subject_dir, thresholds, site=None, subject="P1", skull_stripped=False) == pytest.approx(
            20_000 * 64 / 1000)
    else:
        with pytest.raises(InputError, match=r"the brain mask is (empty|implausible).*not a head"):
            _check_brain(subject_dir, thresholds, site=None, subject="P1", skull_stripped=False)


def test_output_folder_guard(tmp_path: Path) -> None:
    _check_output(tmp_path / "new", "P1")
    (tmp_path / "empty").mkdir()
    _check_output(tmp_path / "empty", "P1")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "prediction.json").write_text(json.dumps({"subject": "P1"}))
    _check_output(mine, "P1")  # the same patient again: replaced as a whole
    with pytest.raises(InputError, match=r"another patient \(P1\)"):
        _check_output(mine, "P2")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        _check_output(tmp_path / "other", "P1")


def test_series_mapping() -> None:
    assert parse_series(["T1c=7", "FLAIR=ax.*flair"]) == {"T1c": 7, "FLAIR": "ax.*flair"}
    for bad in (["T1c"], ["DWI=3"], ["T1=1", "T1=2"]):
        with pytest.raises(InputError, match="--series"):
            parse_series(bad)
