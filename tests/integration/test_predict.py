"""Prediction on new patients with the tiny workflow's bundle: one raw external exam from NIfTI and from DICOM the
test writes, a predict site through the rules, and the refusals of bad input (nothing is trained here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.cli import main
from fedglioma.io.layouts import discover
from fedglioma.predict.bundle import load_bundle
from tests.dicom_writer import write_series
from tests.integration.tiny import snakemake

pytestmark = pytest.mark.slow

#: How the test's DICOM export describes each sequence (the defaults of fedglioma.io.dicom choose by these).
DESCRIPTIONS = {"T1": "AX T1 SE", "T1c": "AX T1 SE POST GD", "T2": "AX T2 TSE", "FLAIR": "AX T2 FLAIR"}


def bundle_of(run: Path) -> Path:
    return run / "results" / "model" / "fedglioma-model.zip"


def external_subject(run: Path) -> tuple[str, dict[str, Path]]:
    found = discover(run / "results/demo/X", "upenn_gbm", "X")
    s = found.subjects[0]
    return s.subject, {m: Path(p) for m, p in s.images.items()}


def predict_cli(bundle: Path, out: Path, subject: str, *extra: str) -> int:
    return main(["predict", "patient", "--bundle", str(bundle), "--subject", subject, "--out", str(out), *extra])


def nifti_args(images: dict[str, Path]) -> list[str]:
    return [a for m in ("T1", "T1c", "T2", "FLAIR") for a in (f"--{m.lower()}", str(images[m]))]


def canonical(path: Path) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.load(str(path)))


@pytest.fixture(scope="module")
def nifti_prediction(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path], Path]:
    subject, images = external_subject(tiny_run)
    out = tmp_path_factory.mktemp("predict") / subject
    assert predict_cli(bundle_of(tiny_run), out, subject, *nifti_args(images)) == 0
    return subject, images, out


def test_workflow_exports_a_bundle_of_its_selected_model(tiny_run: Path) -> None:
    bundle = load_bundle(bundle_of(tiny_run))
    final = json.loads((tiny_run / "results/federated/final.json").read_text())
    assert bundle.manifest["model"]["round"] == final["round"]
    assert [s["site"] for s in bundle.manifest["training"]["sites"]] == ["A", "B"]
    assert bundle.manifest["external"]["site"] == "X"
    assert bundle.preprocess_cfg["skullstrip"]["method"] == "atlas"  # the tiny recipe travels with the model


def test_prediction_from_nifti_lies_on_the_input_grid(nifti_prediction) -> None:
    subject, images, out = nifti_prediction
    doc = json.loads((out / "prediction.json").read_text())
    mask = nib.load(str(out / f"sub-{subject}_desc-tumour_mask.nii.gz"))
    t1c = nib.load(str(images["T1c"]))
    assert mask.shape == t1c.shape and np.allclose(mask.affine, t1c.affine, atol=1e-4)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(t1c.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    volume = float(np.asarray(mask.dataobj).sum() * np.prod(t1c.header.get_zooms()[:3]) / 1000)
    assert doc["tumour"]["volume_ml"] == pytest.approx(volume, abs=0.01)
    assert set(doc["markers"]) == {"idh", "codeletion", "mgmt", "grade"}
    for m in doc["markers"].values():
        assert 0 <= m["probability"] <= 1
        assert m["call"] is None or m["threshold"] is not None
    assert doc["use"].startswith("synthetic demo model")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["prediction.json", "prediction.html", "prediction.png", f"sub-{subject}_desc-tumour_mask.nii.gz"])
    html = (out / "prediction.html").read_text()
    assert subject in html and "not for clinical use" in html and "data:image/png;base64," in html


def test_prediction_from_dicom_agrees_with_nifti(tiny_run: Path, nifti_prediction, tmp_path: Path) -> None:
    """The same exam exported as DICOM series (plus a localiser) gives the same mask (Dice >= 0.99) and markers."""
    subject, images, out_nifti = nifti_prediction
    exam = tmp_path / "exam"
    for number, (modality, path) in enumerate(sorted(images.items()), start=2):
        img = nib.load(str(path))
        write_series(exam / f"s{number}", np.asarray(img.dataobj, dtype=np.float32), img.affine,
                     series_number=number, description=DESCRIPTIONS[modality], slope=0.1)
    loc = nib.load(str(images["T1"]))
    write_series(exam / "s1", np.asarray(loc.dataobj, dtype=np.float32)[:, :, :3], loc.affine, series_number=1,
                 description="3-plane localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    out = tmp_path / "dicom_out"
    assert predict_cli(bundle_of(tiny_run), out, subject, "--dicom", str(exam)) == 0
    a = canonical(out_nifti / f"sub-{subject}_desc-tumour_mask.nii.gz")
    b = canonical(out / f"sub-{subject}_desc-tumour_mask.nii.gz")
    assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)
    x, y = np.asarray(a.dataobj) > 0, np.asarray(b.dataobj) > 0
    dice = 2 * (x & y).sum() / max(x.sum() + y.sum(), 1)
    assert x.sum() > 0 and dice >= 0.99, dice
    da = json.loads((out_nifti / "prediction.json").read_text())
    db = json.loads((out / "prediction.json").read_text())
    for marker in da["markers"]:
        assert db["markers"][marker]["probability"] == pytest.approx(da["markers"][marker]["probability"], abs=0.02)
    assert db["inputs"]["dicom"] == "exam" and "work" not in {p.name for p in out.iterdir()}
    assert "Doe" not in (out / "prediction.json").read_text()


@pytest.mark.parametrize("case", ["missing", "same_file", "four_d", "blank", "other_patient", "bad_id"])
def test_bad_input_is_refused_without_output(case: str, tiny_run: Path, nifti_prediction, tmp_path: Path,
                                            capfd) -> None:
    subject, images, out_nifti = nifti_prediction
    bundle = bundle_of(tiny_run)
    images = dict(images)
    out = tmp_path / "out"
    expect = {"missing": "missing sequence(s) FLAIR", "same_file": "the same file is given for T1 and T2",
              "four_d": "expected 3D", "blank": "all voxels equal", "other_patient": "another patient",
              "bad_id": "letters, digits"}[case]
    sid = subject
    if case == "missing":
        args = [a for a in nifti_args(images) if a not in ("--flair", str(images["FLAIR"]))]
    else:
        if case == "same_file":
            images["T2"] = images["T1"]
        elif case in ("four_d", "blank"):
            img = nib.load(str(images["T2"]))
            data = np.asarray(img.dataobj, dtype=np.float32)
            data = np.stack([data, data], -1) if case == "four_d" else np.zeros_like(data)
            images["T2"] = tmp_path / "t2.nii.gz"
            nib.save(nib.Nifti1Image(data, img.affine), str(images["T2"]))
        elif case == "other_patient":
            shutil.copytree(out_nifti, out)
            sid = "SOMEONE-ELSE"
        elif case == "bad_id":
            sid = "Doe, Jane"
        args = nifti_args(images)
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert predict_cli(bundle, out, sid, *args) == 1
    assert expect in capfd.readouterr().err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    assert not list(tmp_path.glob(".out.*")), "a temporary output folder was left behind"


def test_predict_site_through_the_rules(tiny_run: Path, tmp_path: Path) -> None:
    """A hospital that never trained: a sites table of one predict site and the bundle it received."""
    work = tmp_path / "hospital"
    (work / "config").mkdir(parents=True)
    subject, images = external_subject(tiny_run)
    shutil.copytree(images["T1c"].parent, work / "clinic" / subject)  # one patient keeps the test short
    for seg in (work / "clinic").glob("*/*_segm.nii.gz"):
        seg.unlink()  # new patients come without labels
    shutil.copy(bundle_of(tiny_run), work / "bundle.zip")
    (work / "config" / "sites.tsv").write_text(
        "site\trole\tlayout\tpath\tskull_stripped\tcoregistered\tspace\n"
        "Clinic\tpredict\tupenn_gbm\tclinic\tno\tno\tnative\n")
    (work / "config" / "config.yaml").write_text("sites: config/sites.tsv\npredict:\n  bundle: bundle.zip\n")
    res = snakemake(work, "--cores", "2")
    assert res.returncode == 0, res.stderr[-6000:]
    table = (work / "results/sites/Clinic/predictions/predictions.tsv").read_text().splitlines()
    assert len(table) == 2 and table[0].startswith("subject\t") and table[1].startswith(subject)
    doc = json.loads((work / f"results/sites/Clinic/predictions/sub-{subject}/prediction.json").read_text())
    assert doc["site"] == "Clinic" and doc["bundle"]["sha256"] == load_bundle(work / "bundle.zip").sha256
    assert (work / f"logs/predict_subject/Clinic/{subject}.log").is_file()


def test_phantom_is_no_head_with_hdbet(tmp_path: Path, capfd) -> None:
    """A phantom (a sphere in noise, skull stripping with HD-BET as the demo's recipe does) stops right after
    skull stripping with the input named, and leaves nothing behind."""
    from fedglioma.atomic import write_json
    from fedglioma.predict.bundle import export_bundle
    from fedglioma.settings import Config
    from fedglioma.train.local import init_global

    cfg = Config.model_validate({"model": {"width": 4, "depth": 2}})  # the default recipe: HD-BET fast
    model = tmp_path / "global.safetensors"
    init_global(model, cfg.model, seed=0)
    write_json(tmp_path / "final.json", {"round": 1, "model": str(model), "thresholds": {}})
    write_json(tmp_path / "metrics.json", {"site": "none", "markers": {}})
    bundle = tmp_path / "fedglioma-hdbet.zip"
    export_bundle(str(tmp_path / "final.json"), [str(model)], str(tmp_path / "metrics.json"), [], str(bundle),
                  model="federated", config=cfg.model_dump(mode="json"))
    g = np.indices((120, 130, 110)).astype(np.float32)
    r = np.sqrt(((g - np.array([60, 65, 55])[:, None, None, None]) ** 2).sum(0))
    data = 800.0 * (r < 45) + 400.0 * (r < 20) + np.random.default_rng(0).normal(0, 20, r.shape)
    affine = np.diag([1.2, 1.2, 1.2, 1.0])
    files = {}
    for m in ("T1", "T1c", "T2", "FLAIR"):
        files[m] = tmp_path / f"{m}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.int16), affine), str(files[m]))
    out = tmp_path / "out"
    assert predict_cli(bundle, out, "PH1", *nifti_args(files)) == 1
    err = capfd.readouterr().err
    assert f"file {files['T1c']}: the brain mask is" in err and "not a head" in err
    assert "register_atlas -> 04_atlas" not in err  # stopped before atlas registration, N4 and the rest
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
