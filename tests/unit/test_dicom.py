"""DICOM input (fedglioma.io.dicom): scanning, choosing one series per modality, conversion with dcm2niix.

Every exam is written by the tests (tests/dicom_writer.py): tiny 24x28x20 volumes, 0.9x0.9x2 mm voxels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.constants import MODALITIES
from fedglioma.errors import InputError
from fedglioma.io import dicom
from fedglioma.io.dicom import SeriesInfo, convert_exam, default_modalities, scan_series, select_series
from tests.dicom_writer import CORONAL_AFFINE, TEST_AFFINE, phantom, write_series

SHAPE = (24, 28, 20)
#: The standard exam: modality -> (SeriesNumber, SeriesDescription); plus a localiser (#1) and a derived MPR (#8).
SERIES = {"T1": (2, "t1_mprage_sag"), "T2": (4, "t2_tse_tra"), "FLAIR": (5, "AX FLAIR"), "T1c": (7, "AX T1 POST GD")}
SEED = {m: i for i, m in enumerate(MODALITIES)}


def write_exam(root: Path, affine: np.ndarray = TEST_AFFINE, *, skip: tuple[str, ...] = (), slope: float = 1.0,
               intercept: float = 0.0, series: dict[str, tuple[int, str]] | None = None) -> dict[str, np.ndarray]:
    """Write the standard six-series exam (plus a DICOMDIR and a text note) under ``root``; return the volumes."""
    volumes = {}
    for modality, (number, description) in (series or SERIES).items():
        if modality in skip:
            continue
        volumes[modality] = phantom(SHAPE, seed=SEED[modality])
        write_series(root / f"S{number}", volumes[modality], affine, series_number=number, description=description,
                     slope=slope, intercept=intercept)
    write_series(root / "S1", phantom((24, 28, 3), seed=9), affine, series_number=1, description="localizer",
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(root / "S8", phantom(SHAPE, seed=8), affine, series_number=8, description="AX T1 POST GD MPR",
                 image_type=("DERIVED", "SECONDARY", "MPR"))
    (root / "DICOMDIR").write_bytes(b"not really a DICOMDIR")
    (root / "notes.txt").write_text("exported from PACS\n")
    return volumes


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exam")
    write_exam(root)
    return root


def assert_same_image(path: Path, data: np.ndarray, affine: np.ndarray, *, atol: float = 0.5) -> None:
    """The NIfTI at ``path`` holds ``data`` on the grid of ``affine`` (voxels within ``atol``, world to 1e-3 mm),
    compared after both are reoriented to RAS."""
    source = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    got = nib.as_closest_canonical(nib.load(str(path)))
    assert got.shape == source.shape
    np.testing.assert_allclose(got.affine, source.affine, atol=1e-3)
    np.testing.assert_allclose(got.get_fdata(), source.get_fdata(), atol=atol)


def copy_exam(exam: Path, dest: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the standard exam without the series of the modalities in ``skip`` (faster than writing one)."""
    folders = {f"S{SERIES[m][0]}" for m in skip}
    return Path(shutil.copytree(exam, dest, ignore=lambda d, names: [n for n in names if n in folders]))


def errors(excinfo: pytest.ExceptionInfo[InputError]) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize(("affine", "slope", "intercept"), [(TEST_AFFINE, 1.0, 0.0), (CORONAL_AFFINE, 0.5, -10.0)],
                         ids=["axial-int16", "coronal-rescaled"])
def test_round_trip_keeps_voxels_and_world_geometry(tmp_path: Path, affine: np.ndarray, slope: float,
                                                    intercept: float) -> None:
    volumes = write_exam(tmp_path / "dicom", affine, slope=slope, intercept=intercept)
    out = convert_exam(tmp_path / "dicom", tmp_path / "work", subject="P01")
    assert out == {m: tmp_path / "work" / f"sub-P01_{m}.nii.gz" for m in MODALITIES}
    for modality, path in out.items():
        assert nib.load(str(path)).ndim == 3
        assert_same_image(path, volumes[modality], affine, atol=slope / 2 + 1e-4)


# ------------------------------------------------------------------------------------------------------ choosing
def test_scan_finds_every_series_and_ignores_non_dicom(exam: Path) -> None:
    found = scan_series(exam, subject="P01")
    assert [s.number for s in found] == [1, 2, 4, 5, 7, 8]
    t1 = found[1]
    assert isinstance(t1, SeriesInfo)
    assert (t1.description, t1.modality, t1.image_type) == ("t1_mprage_sag", "MR", ("ORIGINAL", "PRIMARY", "M", "ND"))
    assert (t1.n_instances, t1.n_images, t1.n_positions, t1.rows, t1.cols) == (20, 20, 20, 28, 24)
    assert all(f.parent == exam / "S2" for f in t1.files)
    assert found[0].skip_reason() == "localiser"
    assert found[-1].skip_reason().startswith("derived")


def test_defaults_choose_four_of_six_series(exam: Path) -> None:
    chosen = select_series(scan_series(exam, subject="P01"), None, subject="P01", folder=exam)
    assert list(chosen) == list(MODALITIES)
    assert {m: s.number for m, s in chosen.items()} == {m: n for m, (n, _) in SERIES.items()}


@pytest.mark.parametrize("mapping", [
    {"T1": 12, "T1c": "17", "T2": "^series b$", "FLAIR": r"SERIES\s+C"},
    {"T1": "A", "T1c": 17, "T2": 14, "FLAIR": 15},
], ids=["numbers-and-regexes", "regex-and-numbers"])
def test_mapping_by_series_number_and_description_regex(tmp_path: Path, mapping: dict[str, int | str]) -> None:
    plain = {"T1": (12, "series A"), "T2": (14, "series B"), "FLAIR": (15, "series C"), "T1c": (17, "series D")}
    volumes = write_exam(tmp_path / "dicom", series=plain)
    folder = tmp_path / "dicom"
    with pytest.raises(InputError, match="T1: no series matches the default description rules"):
        select_series(scan_series(folder, subject="P01"), None, subject="P01", folder=folder)
    chosen = select_series(scan_series(folder, subject="P01"), mapping, subject="P01", folder=folder)
    assert {m: s.number for m, s in chosen.items()} == {m: n for m, (n, _) in plain.items()}
    out = convert_exam(folder, tmp_path / "work", subject="P01", series=mapping)
    for modality, path in out.items():
        assert_same_image(path, volumes[modality], TEST_AFFINE)


def test_partial_mapping_resolves_two_flairs_and_the_rest_by_default(exam: Path, tmp_path: Path) -> None:
    folder = copy_exam(exam, tmp_path / "dicom")
    write_series(folder / "S9", phantom(SHAPE, seed=5), series_number=9, description="sag 3D FLAIR")
    found = scan_series(folder, subject="P01")
    with pytest.raises(InputError) as excinfo:
        select_series(found, None, subject="P01", folder=folder)
    message = errors(excinfo)
    assert "FLAIR: 2 candidate series match the default description rules: #5 'AX FLAIR', #9 'sag 3D FLAIR'" in message
    for number in (1, 2, 4, 5, 7, 8, 9):  # every series found is listed
        assert f"  #{number} '" in message
    assert "#1 'localizer' MR ORIGINAL\\PRIMARY\\LOCALIZER, 3 slice position(s)" in message
    assert "skipped: localiser" in message and "skipped: derived image" in message
    assert "chosen for T1c" in message
    assert "--series T1c=7" in message and "--series 'FLAIR=ax.*flair'" in message
    chosen = select_series(found, {"FLAIR": "^sag"}, subject="P01", folder=folder)
    assert {m: s.number for m, s in chosen.items()} == {"T1": 2, "T1c": 7, "T2": 4, "FLAIR": 9}


def test_same_series_for_two_modalities_is_refused(exam: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        select_series(scan_series(exam, subject="P01"), {"T1": 2, "T1c": "mprage"}, subject="P01", folder=exam)
    assert "series #2 't1_mprage_sag' is chosen for T1 and T1c" in errors(excinfo)


@pytest.mark.parametrize(("mapping", "problem"), [
    ({"T1": 1}, "T1: SeriesNumber 1 matches only #1 'localizer' (localiser)"),
    ({"T1": 8}, "T1: SeriesNumber 8 matches only #8 'AX T1 POST GD MPR' (derived image"),
    ({"T1": 99}, "T1: no series matches SeriesNumber 99"),
    ({"T1": "t("}, "is not a valid regular expression"),
    ({"T3": 2}, "unknown modality 'T3'"),
])
def test_mapping_to_a_series_that_cannot_be_used(exam: Path, mapping: dict[str, int | str], problem: str) -> None:
    with pytest.raises(InputError, match="subject P01") as excinfo:
        select_series(scan_series(exam, subject="P01"), mapping, subject="P01", folder=exam)
    assert problem in errors(excinfo)


@pytest.mark.parametrize(("slices", "volumes", "problem"), [
    (1, 1, "T2: series #4 't2_tse_tra' is a single 2D slice, not one 3D volume"),
    (20, 2, "T2: series #4 't2_tse_tra' is 4D/multi-volume: 40 images at 20 slice positions"),
], ids=["single-slice", "4d"])
def test_single_slice_or_4d_series_is_refused(exam: Path, tmp_path: Path, slices: int, volumes: int,
                                              problem: str) -> None:
    folder = copy_exam(exam, tmp_path / "dicom", skip=("T2",))
    write_series(folder / "S4", phantom((24, 28, slices), seed=1), series_number=4, description="t2_tse_tra",
                 volumes=volumes)
    with pytest.raises(InputError) as excinfo:
        convert_exam(folder, tmp_path / "work", subject="P01")
    assert problem in errors(excinfo)
    assert not (tmp_path / "work").exists()


def test_missing_modality_lists_what_was_found(exam: Path, tmp_path: Path) -> None:
    folder = copy_exam(exam, tmp_path / "dicom", skip=("FLAIR",))
    with pytest.raises(InputError) as excinfo:
        convert_exam(folder, tmp_path / "work", subject="P01")
    message = errors(excinfo)
    assert "FLAIR: no series matches the default description rules" in message
    assert "Series found (5)" in message
    for number, description in [(1, "localizer"), (2, "t1_mprage_sag"), (4, "t2_tse_tra"), (7, "AX T1 POST GD"),
                                (8, "AX T1 POST GD MPR")]:
        assert f"#{number} '{description}'" in message
    assert message.startswith(f"subject P01, file {folder}: cannot choose one 3D series per modality")


@pytest.mark.parametrize("damage", ["truncated-pixels", "truncated-header", "not-dicom"])
def test_corrupt_file_is_named(exam: Path, tmp_path: Path, damage: str) -> None:
    folder = copy_exam(exam, tmp_path / "dicom")
    victim = sorted((folder / "S4").iterdir())[7]
    size = victim.stat().st_size
    if damage == "truncated-pixels":
        with victim.open("r+b") as f:
            f.truncate(size - 200)
    elif damage == "truncated-header":
        with victim.open("r+b") as f:
            f.truncate(400)
    else:
        victim = folder / "S4" / "IM_notes"
        victim.write_bytes(b"\x00\x01 not an image " * 40)
    with pytest.raises(InputError) as excinfo:
        convert_exam(folder, tmp_path / "work", subject="P01")
    message = errors(excinfo)
    assert f"file {victim}:" in message
    assert "DICOM" in message
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------------------- conversion
def test_sidecars_are_anonymised_and_kept_apart(exam: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    out = convert_exam(exam, work, subject="case-7_b")
    assert sorted(p.name for p in work.iterdir()) == sorted(["dcm2niix", *(f"sub-case-7_b_{m}.nii.gz" for m in MODALITIES)])
    assert all(p.parent == work for p in out.values())
    sidecars = sorted(p.name for p in (work / "dcm2niix").iterdir())
    assert sidecars == sorted([*(f"sub-case-7_b_{m}.json" for m in MODALITIES), "sub-case-7_b_series.json"])
    for path in (work / "dcm2niix").iterdir():
        text = path.read_text()
        doc = json.loads(text)
        assert "PatientName" not in doc and "PatientID" not in doc and "PatientBirthDate" not in doc
        assert "Doe" not in text and "PAT-0042" not in text and "19700101" not in text and "20240102" not in text
    assert json.loads((work / "dcm2niix" / "sub-case-7_b_T1c.json").read_text())["SeriesNumber"] == 7
    assert json.loads((work / "dcm2niix" / "sub-case-7_b_series.json").read_text())["FLAIR"]["SeriesNumber"] == 5
    for path in out.values():  # nothing of the patient in the image header either
        header = nib.load(str(path)).header
        assert b"Doe" not in bytes(header["descrip"]) + bytes(header["aux_file"]) + bytes(header["db_name"])


def test_folder_per_modality(exam: Path, tmp_path: Path) -> None:
    folders = {m: exam / f"S{n}" for m, (n, _) in SERIES.items()}
    out = convert_exam(folders, tmp_path / "work", subject="P01")
    reference = convert_exam(exam, tmp_path / "ref", subject="P01")
    for modality in MODALITIES:
        np.testing.assert_array_equal(nib.load(str(out[modality])).get_fdata(),
                                      nib.load(str(reference[modality])).get_fdata())
    with pytest.raises(InputError, match="chosen for T1 and T1c"):
        convert_exam({**folders, "T1c": exam / "S2"}, tmp_path / "twice", subject="P01")
    with pytest.raises(InputError, match="derived image"):
        convert_exam({**folders, "T1c": exam / "S8"}, tmp_path / "derived", subject="P01")


def _fake_dcm2niix(monkeypatch: pytest.MonkeyPatch, fail_on: str, how: str) -> None:
    real = dicom._dcm2niix

    def fake(in_dir: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
        result = real(in_dir, out_dir)
        if in_dir.parent.name != fail_on:
            return result
        if how == "exit":
            return subprocess.CompletedProcess([], 1, stdout="Found 20 DICOM file(s)\n", stderr="Error: boom\n")
        if how == "split":
            shutil.copy(out_dir / "series.nii.gz", out_dir / "series_e2.nii.gz")
        if how == "4d":
            img = nib.load(str(out_dir / "series.nii.gz"))
            data = np.asarray(img.dataobj)
            nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), str(out_dir / "series.nii.gz"))
        return result

    monkeypatch.setattr(dicom, "_dcm2niix", fake)


@pytest.mark.parametrize(("how", "problem"), [
    ("exit", "dcm2niix failed on FLAIR series #5 'AX FLAIR' (exit 1):\nError: boom"),
    ("split", "dcm2niix made 2 images from FLAIR series #5 'AX FLAIR' (file name suffixes: .nii.gz, _e2.nii.gz)"),
    ("4d", "dcm2niix made an image of shape (24, 28, 20, 2) from FLAIR series #5 'AX FLAIR'"),
])
def test_failed_conversion_leaves_no_partial_output(exam: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    how: str, problem: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("unrelated\n")
    _fake_dcm2niix(monkeypatch, "FLAIR", how)  # FLAIR is converted last, after the three others succeeded
    with pytest.raises(InputError) as excinfo:
        convert_exam(exam, work, subject="P01")
    assert problem in errors(excinfo)
    assert [p.name for p in work.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("subject", ["../P01", "P 01", "P01.nii", "", "sub/01"])
def test_subject_id_must_be_a_safe_file_name(exam: Path, tmp_path: Path, subject: str) -> None:
    with pytest.raises(InputError, match="is not valid"):
        convert_exam(exam, tmp_path / "work", subject=subject)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(("description", "expected"), [
    ("AX T1 POST GD", ["T1c"]), ("T1_MPRAGE_POST", ["T1c"]), ("T1+C", ["T1c"]), ("sT1W_3D_TFE_Gd", ["T1c"]),
    ("t1ce", ["T1c"]), ("MPRAGE GAD", ["T1c"]), ("AX BRAVO +C", ["T1c"]), ("T1_ce_tra", ["T1c"]),
    ("t1_mprage_sag_p2_iso", ["T1"]), ("sT1W_3D_TFE", ["T1"]), ("T1 pre-contrast", ["T1"]), ("T1 precontrast", ["T1"]),
    ("SAG T1 FLAIR", ["T1"]), ("t1_fl2d_tra", ["T1"]),
    ("t2_tse_tra", ["T2"]), ("AX T2 FSE", ["T2"]), ("T2W_TSE", ["T2"]),
    ("AX FLAIR", ["FLAIR"]), ("T2 FLAIR", ["FLAIR"]), ("t2_tirm_tra_dark-fluid", ["FLAIR"]), ("3D FLAIR", ["FLAIR"]),
    ("T2*", []), ("t2_swi_tra", []), ("ep2d_diff_mddw", []), ("ADC", []), ("ep2d_perf", []), ("T1 MAP", []),
    ("localizer", []), ("", []),
])
def test_default_rules(description: str, expected: list[str]) -> None:
    assert default_modalities(description) == expected
