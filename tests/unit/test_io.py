"""Input contract: layouts, clinical harmonisation and ``fedglioma cohort check-inputs``."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedglioma.cli import main
from fedglioma.config import load_sites
from fedglioma.errors import InputError
from fedglioma.io.clinical import cohort_summary, harmonise, parse_grade, site_labels, site_mapping
from fedglioma.io.layouts import LAYOUTS, discover
from fedglioma.io.nifti import load_nifti
from fedglioma.settings import ClinicalMapping
from tests.conftest import LAYOUT_IDS, LAYOUT_LABELS, make_site, write_nifti, write_sites_tsv


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_discover_every_layout(tmp_path: Path, layout: str) -> None:
    root = make_site(tmp_path / "s", layout)
    found = discover(root, layout, "s")
    assert not found.problems
    assert [s.subject for s in found.subjects] == LAYOUT_IDS[layout]
    for s in found.subjects:
        assert set(s.images) == {"T1", "T1c", "T2", "FLAIR"}
        assert all(p.is_file() for p in s.images.values())
        assert s.seg is not None and s.seg.is_file()


def test_segmentation_is_optional(tmp_path: Path) -> None:
    root = make_site(tmp_path / "s", "brats2021", with_seg=False)
    found = discover(root, "brats2021", "s")
    assert not found.problems and all(s.seg is None for s in found.subjects)


def test_upenn_segmentation_in_images_segm(tmp_path: Path) -> None:
    root = make_site(tmp_path / "s", "upenn_gbm", with_seg=False)
    sid = LAYOUT_IDS["upenn_gbm"][0]
    write_nifti(root / "images_segm" / f"{sid}_segm.nii.gz")
    found = discover(root, "upenn_gbm", "s")
    assert {s.subject: s.seg is not None for s in found.subjects} == {sid: True, LAYOUT_IDS["upenn_gbm"][1]: False}


def test_missing_modality_is_named(tmp_path: Path) -> None:
    root = make_site(tmp_path / "s", "brats2021")
    sid = LAYOUT_IDS["brats2021"][0]
    (root / sid / f"{sid}_flair.nii.gz").unlink()
    found = discover(root, "brats2021", "siteX")
    assert [s.subject for s in found.subjects] == [LAYOUT_IDS["brats2021"][1]]
    (p,) = found.problems
    assert p.site == "siteX" and p.subject == sid and p.file.endswith(f"{sid}_flair.nii.gz")
    assert "FLAIR" in str(p)


def test_duplicated_subject(tmp_path: Path) -> None:
    root = make_site(tmp_path / "s", "ucsf_pdgm")
    sid = LAYOUT_IDS["ucsf_pdgm"][0]
    shutil.copytree(root / f"{sid}_nifti", root / sid)
    found = discover(root, "ucsf_pdgm", "s")
    assert len(found.subjects) == 2
    assert any("duplicated subject ID" in str(p) and p.subject == sid for p in found.problems)


def test_unknown_layout_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown layout"):
        discover(tmp_path, "dicom", "s")
    with pytest.raises(InputError, match="site folder not found"):
        discover(tmp_path / "nope", "egd", "s")


@pytest.mark.parametrize(
    ("text", "grade"),
    [
        ("4", 4),
        ("IV", 4),
        ("iii", 3),
        ("WHO grade II", 2),
        ("G3", 3),
        ("grade 4", 4),
        ("WHO CNS grade 3", 3),
        ("2.0", 2),
    ],
)
def test_parse_grade(text: str, grade: int) -> None:
    assert parse_grade(text) == grade


def test_parse_grade_unknown_and_missing() -> None:
    assert parse_grade("grade 5") is None
    assert np.isnan(parse_grade("NA"))


def test_harmonise_spellings_and_missing() -> None:
    table = pd.DataFrame(
        {
            "ID": ["a", "b", "c"],
            "idh_status": ["IDH-mutant", "wildtype", ""],
            "codel": ["co-deleted", "", "intact"],
            "mgmt": ["M", "unmethylated", "indeterminate"],
            "who": ["II", "4", "WHO grade III"],
        }
    )
    mapping = site_mapping(
        {
            "default": {
                "id_column": "ID",
                "columns": {"idh": "idh_status", "codeletion": "codel", "mgmt": "mgmt", "grade": "who"},
            }
        },
        "s",
    )
    out = harmonise(table, mapping, site="s", file="x.tsv")
    assert out["idh"].tolist()[:2] == [1.0, 0.0] and np.isnan(out["idh"][2])
    assert out["codeletion"][0] == 1.0 and np.isnan(out["codeletion"][1]) and out["codeletion"][2] == 0.0
    assert out["mgmt"][0] == 1.0 and out["mgmt"][1] == 0.0 and np.isnan(out["mgmt"][2])
    assert out["grade"].tolist() == [2.0, 4.0, 3.0]


def test_harmonise_site_specific_spelling_and_absent_column() -> None:
    table = pd.DataFrame({"subject": ["a"], "IDH": ["IDHmut-R132H"], "grade": ["4"]})
    cfg = {"sites": {"s": {"values": {"idh": {"IDHmut-R132H": "mutant"}}}}}
    out = harmonise(table, site_mapping(cfg, "s"), site="s", file="x.tsv")
    assert out["idh"][0] == 1.0 and np.isnan(out["mgmt"][0]) and np.isnan(out["codeletion"][0])


def test_unknown_spelling_names_file_row_column() -> None:
    table = pd.DataFrame({"subject": ["a", "b"], "IDH": ["mutant", "maybe"]})
    with pytest.raises(InputError) as e:
        harmonise(table, ClinicalMapping(), site="s", file="clin.tsv")
    msg = str(e.value)
    assert "clin.tsv" in msg and "row 3" in msg and "'IDH'" in msg and "'maybe'" in msg and "site s" in msg


def test_duplicated_subject_in_clinical_table() -> None:
    table = pd.DataFrame({"subject": ["a", "a"], "IDH": ["mutant", "wildtype"]})
    with pytest.raises(InputError, match=r"subject a, file c.tsv: rows \[2, 3\]: duplicated subject"):
        harmonise(table, ClinicalMapping(), site="s", file="c.tsv")


def test_site_labels_keeps_missing_and_rejects_orphans(tmp_path: Path) -> None:
    clin = tmp_path / "c.tsv"
    clin.write_text("subject\tIDH\na\tmutant\n")
    out = site_labels(["a", "b"], clin, ClinicalMapping(), site="s")
    assert out["idh"][0] == 1.0 and out["idh"].isna().tolist() == [False, True]
    with pytest.raises(InputError, match="no images"):
        site_labels(["b"], clin, ClinicalMapping(), site="s")


def test_cohort_summary_counts_known_and_missing_labels() -> None:
    labels = pd.DataFrame({"subject": ["a", "b", "c", "d"], "idh": [1.0, 0.0, np.nan, 1.0],
                           "codeletion": [np.nan] * 4, "mgmt": [1.0, 1.0, 0.0, 0.0], "grade": [2.0, 4.0, 4.0, np.nan]})
    s = cohort_summary(labels, site="S", role="train")
    assert s == {"site": "S", "role": "train", "n": 4,
                 "idh_n": 3, "idh_missing": 1, "idh_positive": 2,
                 "codeletion_n": 0, "codeletion_missing": 4, "codeletion_positive": 0,
                 "mgmt_n": 4, "mgmt_missing": 0, "mgmt_positive": 2,
                 "grade_n": 3, "grade_missing": 1, "grade2": 1, "grade3": 0, "grade4": 2}
    assert all(type(v) is int for k, v in s.items() if k not in ("site", "role"))  # plain JSON numbers


def test_load_nifti_errors(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "a.nii.gz")
    assert load_nifti(good).shape == (8, 9, 10)
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match="not a NIfTI"):
        load_nifti(txt, site="s", subject="1")
    four = write_nifti(tmp_path / "four.nii.gz", np.ones((4, 4, 4, 3), np.float32))
    with pytest.raises(InputError, match="4D"):
        load_nifti(four)
    nan = np.ones((4, 4, 4), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_nifti(write_nifti(tmp_path / "nan.nii.gz", nan))
    with pytest.raises(InputError, match="empty"):
        load_nifti(write_nifti(tmp_path / "zero.nii.gz", np.zeros((4, 4, 4), np.float32)))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _sites_for(tmp_path: Path, layout: str = "brats2021") -> tuple[Path, Path]:
    train = make_site(tmp_path / "train", layout)
    ext = make_site(tmp_path / "ext", "egd")
    tsv = write_sites_tsv(
        tmp_path / "sites.tsv",
        [
            {
                "site": "A",
                "role": "train",
                "layout": layout,
                "path": str(train),
                "clinical": str(train / "clinical.tsv"),
                "tumour_labels": ",".join(map(str, LAYOUT_LABELS[layout])),
            },
            {"site": "X", "role": "external", "layout": "egd", "path": str(ext), "clinical": str(ext / "clinical.tsv")},
        ],
    )
    return tsv, train


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_check_inputs_ok(tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    tsv, _ = _sites_for(tmp_path, layout)
    assert main(["cohort", "check-inputs", "--sites", str(tsv)]) == 0
    out = capsys.readouterr().out
    assert "all inputs OK" in out and LAYOUT_IDS[layout][0] in out and "T1,T1c,T2,FLAIR" in out


def test_check_inputs_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv, train = _sites_for(tmp_path)
    s1, s2 = LAYOUT_IDS["brats2021"]
    (train / s1 / f"{s1}_t2.nii.gz").unlink()  # missing modality
    _truncate(train / s2 / f"{s2}_flair.nii.gz")  # truncated file
    (train / "BraTS2021_00009").mkdir()  # listed in clinical table, no images
    with (train / "clinical.tsv").open("a") as f:
        f.write("BraTS2021_00099\tmutant\t\t\t2\n")
    assert main(["cohort", "check-inputs", "--sites", str(tsv)]) == 1
    out = capsys.readouterr().out
    assert f"subject {s1}, file {train / s1 / f'{s1}_t2.nii.gz'}: modality T2 missing" in out
    assert f"subject {s2}, file {train / s2 / f'{s2}_flair.nii.gz'}: image data are truncated" in out
    assert "subject BraTS2021_00099" in out and "no images" in out
    assert "7 problem(s)" in out  # the empty folder BraTS2021_00009 lacks all four modalities


def test_check_inputs_not_nifti_and_bad_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv, train = _sites_for(tmp_path)
    s1, s2 = LAYOUT_IDS["brats2021"]
    (train / s1 / f"{s1}_t1.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI file at all" * 20))
    seg = np.zeros((8, 9, 10), np.uint8)
    seg[3, 3, 3] = 3  # BraTS 2021 has no label 3
    write_nifti(train / s2 / f"{s2}_seg.nii.gz", seg)
    assert main(["cohort", "check-inputs", "--sites", str(tsv)]) == 1
    out = capsys.readouterr().out
    assert f"site A, subject {s1}" in out and "cannot be read as NIfTI" in out
    assert f"site A, subject {s2}" in out and "label value(s) [3]" in out


def test_check_inputs_seg_grid_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv, train = _sites_for(tmp_path)
    s1 = LAYOUT_IDS["brats2021"][0]
    write_nifti(train / s1 / f"{s1}_seg.nii.gz", np.zeros((8, 9, 11), np.uint8))
    assert main(["cohort", "check-inputs", "--sites", str(tsv)]) == 1
    assert "segmentation grid" in capsys.readouterr().out


def test_sites_table_rules(tmp_path: Path) -> None:
    tsv = write_sites_tsv(tmp_path / "s.tsv", [{"site": "A", "role": "train", "path": "x"}])
    with pytest.raises(InputError, match="0 external sites"):
        load_sites(tsv)
    bad = write_sites_tsv(tmp_path / "b.tsv", [{"site": "../etc", "role": "train", "path": "x"}])
    with pytest.raises(InputError, match="row 2, column site: '../etc' does not match"):
        load_sites(bad)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["cohort", "--help"])
    assert e.value.code == 0
    assert "check-inputs" in capsys.readouterr().out


def test_one_strict_json_writer_and_reader(tmp_path: Path) -> None:
    """write_json writes strict JSON (NaN/inf -> null, numpy made plain); read_json names a broken file."""
    import json

    from fedglioma.atomic import write_json
    from fedglioma.io.files import read_json

    out = tmp_path / "x.json"
    write_json(out, {"auc": float("nan"), "n": np.int64(3), "v": np.array([1.5, np.inf]), "p": tmp_path})
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc == {"auc": None, "n": 3, "v": [1.5, None], "p": str(tmp_path)}
    assert read_json(out, what="metrics") == doc
    out.write_text('{"auc": ')
    with pytest.raises(InputError, match="metrics is not valid JSON") as err:
        read_json(out, what="metrics")
    assert str(out) in str(err.value)
    with pytest.raises(InputError, match="metrics not found"):
        read_json(tmp_path / "missing.json", what="metrics")
