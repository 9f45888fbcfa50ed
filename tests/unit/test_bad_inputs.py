"""The catalogue of bad inputs (docs/errors.md): config.yaml, sites.tsv, site folders, clinical tables, images.

Each refused input is one case of :data:`REFUSED`: a good two-site study (training site ``A`` in the BraTS 2021
layout, external site ``X`` in the EGD layout, 8x9x10 images) with one thing broken. The test runs the real
command line in-process (``fedglioma.cli.main``): ``fedglioma cohort check-inputs`` and the workflow step that
reads the broken input (``cohort labels`` for tables, ``preprocess subject`` for images), and asserts for each a
non-zero exit, a message that names the file, the site and the subject (where they apply: a config.yaml key
has neither) and a ``Fix:``, and that no file (output or temporary sibling) was left behind. :data:`ACCEPTED` lists inputs that look odd but are
legal (a byte-order mark, semicolons, left-handed affines): they pass.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedglioma.cli import main
from tests.conftest import LAYOUT_IDS, make_site, seg_volume, write_nifti, write_sites_tsv

S1, S2 = LAYOUT_IDS["brats2021"]
X1 = LAYOUT_IDS["egd"][0]


@dataclass
class Study:
    """A good two-site study under ``root`` (the working directory of the commands)."""

    root: Path
    config_extra: str = ""
    rows: list[dict[str, str]] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def a(self) -> Path:
        return self.root / "A"

    @property
    def x(self) -> Path:
        return self.root / "X"

    def image(self, subject: str = S1, suffix: str = "t1") -> Path:
        return self.a / subject / f"{subject}_{suffix}.nii.gz"

    @property
    def clinical(self) -> Path:
        return self.a / "clinical.tsv"

    def write(self) -> None:
        write_sites_tsv(self.root / "sites.tsv", self.rows)
        (self.root / "config.yaml").write_text("sites: sites.tsv\n" + self.config_extra)

    def args(self) -> list[str]:
        out = ["--config", "config.yaml", "--sites", "sites.tsv"]
        for o in self.overrides:
            out += ["--set", o]
        return out


def study(root: Path) -> Study:
    make_site(root / "A", "brats2021")
    make_site(root / "X", "egd")
    s = Study(root)
    s.rows = [
        {"site": "A", "role": "train", "layout": "brats2021", "path": "A", "clinical": "A/clinical.tsv",
         "tumour_labels": "1,2,4"},
        {"site": "X", "role": "external", "layout": "egd", "path": "X", "clinical": "X/clinical.tsv"},
    ]
    return s


def _image(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    write_nifti(path, data, affine)


def _raw_header(path: Path, *, srow: np.ndarray | None = None, dims: tuple[int, ...] | None = None) -> None:
    """Rewrite ``path``'s NIfTI header in place (what nibabel's writer would refuse or fix up)."""
    img = nib.load(str(path))
    hdr = img.header.copy()
    data = np.asanyarray(img.dataobj)
    if srow is not None:
        hdr.set_qform(None, code=0)
        hdr["sform_code"] = 1
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = srow[0], srow[1], srow[2]
    if dims is not None:
        hdr["dim"][0] = len(dims)
        hdr["dim"][1: len(dims) + 1] = dims
    hdr["vox_offset"] = 352  # the 348-byte header and 4 bytes of "no extension"
    raw = hdr.binaryblock + b"\0" * 4 + np.asarray(data, hdr.get_data_dtype()).tobytes()
    path.write_bytes(gzip.compress(raw))


# ---- the broken inputs: each function breaks one thing and returns the fragments the message must hold --------
def config_typo(s: Study) -> list[str]:
    s.config_extra = "preprocess:\n  n4:\n    shrink_factr: 2\n"
    return ["config.yaml", "preprocess.n4.shrink_factr", "shrink_factor"]


def config_every_problem(s: Study) -> list[str]:
    s.config_extra = "train:\n  epochs_per_round: -1\n  learning_rat: 0.1\ndemo:\n  seed: two\n"
    return ["config.yaml", "train.epochs_per_round", "train.learning_rat", "demo.seed"]


def config_size_limit(s: Study) -> list[str]:
    s.config_extra = "inputs:\n  max_image_mb: 0\n"
    return ["config.yaml", "inputs.max_image_mb"]


def site_id_path_like(s: Study) -> list[str]:
    s.rows[0]["site"] = "../A"
    return ["sites.tsv", "row 2", "'../A'"]


def site_id_and_layout(s: Study) -> list[str]:
    s.rows[0]["site"] = "A/B"
    s.rows[1]["layout"] = "brats2020"
    return ["sites.tsv", "row 2", "'A/B'", "row 3", "site X", "'brats2020'", "egd"]


def sites_unknown_column(s: Study) -> list[str]:
    write_sites_tsv(s.root / "sites.tsv", s.rows)
    text = (s.root / "sites.tsv").read_text().replace("layout", "layuot", 1)
    s.write = lambda: ((s.root / "config.yaml").write_text("sites: sites.tsv\n"),  # type: ignore[method-assign]
                       (s.root / "sites.tsv").write_text(text))
    return ["sites.tsv", "layuot", "layout"]


def sites_no_path(s: Study) -> list[str]:
    s.rows[1]["path"] = ""
    return ["sites.tsv", "row 3", "site X", "path"]


def two_external_sites(s: Study) -> list[str]:
    s.rows[0]["role"] = "external"
    return ["sites.tsv", "site A", "site X", "external"]


def site_ids_casefold(s: Study) -> list[str]:
    s.rows.append({**s.rows[0], "site": "a"})
    return ["sites.tsv", "['A', 'a']", "case folding"]


def site_folder_missing(s: Study) -> list[str]:
    s.rows[0]["path"] = "A_typo"
    return ["site A", "A_typo"]


def symlink_outside(s: Study) -> list[str]:
    outside = s.root / "elsewhere" / "t1.nii.gz"
    outside.parent.mkdir()
    s.image().rename(outside)
    s.image().symlink_to(outside)
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "outside"]


def subject_id_bad_chars(s: Study) -> list[str]:
    (s.x / X1).rename(s.x / "EGD.0001")
    return ["site X", "subject EGD.0001", "T1GD.nii.gz"]


def subject_ids_casefold(s: Study) -> list[str]:
    (s.x / X1).rename(s.x / X1.lower())
    make_site(s.root / "X2", "egd", clinical=False)
    (s.root / "X2" / X1).rename(s.x / X1)
    return ["site X", f"subject {X1.lower()}", f"subject {X1}"]


def missing_modality(s: Study) -> list[str]:
    s.image(S1, "t2").unlink()
    return ["site A", f"subject {S1}", f"{S1}_t2.nii.gz"]


def grade_spelling(s: Study) -> list[str]:
    s.clinical.write_text(s.clinical.read_text().replace("WHO grade II", "grade five"))
    return ["site A", f"subject {S1}", "clinical.tsv", "row 2", "'grade five'"]


def ambiguous_separator(s: Study) -> list[str]:
    s.clinical.write_text(f"subject;IDH,grade\n{S1};mutant,2\n{S2};wildtype;4\n")
    return ["site A", "clinical.tsv", "separator"]


def clinical_orphan(s: Study) -> list[str]:
    with s.clinical.open("a") as f:
        f.write("BraTS2021_00099\tmutant\t\t\t2\n")
    return ["site A", "subject BraTS2021_00099", "clinical.tsv"]


def clinical_no_id_column(s: Study) -> list[str]:
    s.clinical.write_text(s.clinical.read_text().replace("subject", "patient", 1))
    return ["site A", "clinical.tsv", "'subject'"]


def clinical_duplicate(s: Study) -> list[str]:
    lines = s.clinical.read_text().splitlines()
    s.clinical.write_text("\n".join([*lines, lines[1]]) + "\n")
    return ["site A", f"subject {S1}", "clinical.tsv"]


def seg_label_outside(s: Study) -> list[str]:
    seg = seg_volume()
    seg[5, 5, 5] = 3  # BraTS 2021 declares 1, 2, 4
    _image(s.image(S1, "seg"), seg)
    return ["site A", f"subject {S1}", f"{S1}_seg.nii.gz", "[3]"]


def nan_affine(s: Study) -> list[str]:
    srow = np.eye(4)[:3]
    srow[0, 0] = np.nan
    _raw_header(s.image(), srow=srow)
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "affine"]


def zero_affine(s: Study) -> list[str]:
    _raw_header(s.image(), srow=np.zeros((3, 4)))
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "affine"]


def sheared_affine(s: Study) -> list[str]:
    affine = np.eye(4)
    affine[0, 1] = 0.3  # the second voxel axis leans 17 degrees towards the first
    _image(s.image(), affine=affine)
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "orthogonal"]


def image_2d(s: Study) -> list[str]:
    _image(s.image(), np.ones((8, 9), np.float32) + np.arange(9))
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "2D"]


def image_4d(s: Study) -> list[str]:
    _image(s.image(), np.random.default_rng(0).uniform(1, 2, (8, 9, 10, 3)).astype(np.float32))
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "4D"]


def seg_grid_mismatch(s: Study) -> list[str]:
    _image(s.image(S1, "seg"), seg_volume((8, 9, 11)))
    return ["site A", f"subject {S1}", f"{S1}_seg.nii.gz", "grid"]


def truncated_gzip(s: Study) -> list[str]:
    data = s.image().read_bytes()
    s.image().write_bytes(data[: len(data) // 2])
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "truncated"]


def empty_file(s: Study) -> list[str]:
    s.image().write_bytes(b"")
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "empty"]


def enormous_image(s: Study) -> list[str]:
    # the header claims 2000^3 float32 voxels (32 GB); the file holds 720: only a limit read from the header,
    # before any data, names the size (loading would report truncated data, or exhaust the memory)
    _raw_header(s.image(), dims=(2000, 2000, 2000))
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "inputs.max_image_mb"]


def over_configured_limit(s: Study) -> list[str]:
    s.overrides = ["inputs.max_image_mb=0.001"]  # 8x9x10 float32 = 2.8 kB
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "inputs.max_image_mb"]


def nan_voxels(s: Study) -> list[str]:
    data = np.ones((8, 9, 10), np.float32) + np.arange(10)
    data[1, 1, 1] = np.nan
    _image(s.image(), data)
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "NaN"]


def not_nifti(s: Study) -> list[str]:
    s.image().write_bytes(gzip.compress(b"not a NIfTI file" * 40))
    return ["site A", f"subject {S1}", f"{S1}_t1.nii.gz", "NIfTI"]


#: (bad input, what breaks it, which step reads it besides check-inputs: "labels", "preprocess" or None)
REFUSED: list[tuple[str, Callable[[Study], list[str]], str | None]] = [
    ("config: typo'd key", config_typo, "labels"),
    ("config: several bad keys and values at once", config_every_problem, "labels"),
    ("config: non-positive image size limit", config_size_limit, None),
    ("sites.tsv: path-like site ID", site_id_path_like, "labels"),
    ("sites.tsv: path-like site ID and unknown layout in the next row", site_id_and_layout, "labels"),
    ("sites.tsv: unknown column", sites_unknown_column, "labels"),
    ("sites.tsv: empty path", sites_no_path, "labels"),
    ("sites.tsv: two external sites", two_external_sites, "labels"),
    ("sites.tsv: site IDs equal after case folding", site_ids_casefold, "labels"),
    ("site folder not found", site_folder_missing, "labels"),
    ("symlink pointing outside the site folder", symlink_outside, "preprocess"),
    ("subject ID with characters other than letters, digits, - and _", subject_id_bad_chars, None),
    ("subject IDs equal after case folding", subject_ids_casefold, None),
    ("missing modality", missing_modality, "preprocess"),
    ("clinical: unknown grade spelling", grade_spelling, "labels"),
    ("clinical: ambiguous separator", ambiguous_separator, "labels"),
    ("clinical: subject without images", clinical_orphan, "labels"),
    ("clinical: no ID column", clinical_no_id_column, "labels"),
    ("clinical: duplicated subject", clinical_duplicate, "labels"),
    ("segmentation: label value outside the declared set", seg_label_outside, "preprocess"),
    ("image: NaN in the affine", nan_affine, "preprocess"),
    ("image: zero affine", zero_affine, "preprocess"),
    ("image: sheared (non-orthogonal) affine", sheared_affine, "preprocess"),
    ("image: 2D", image_2d, "preprocess"),
    ("image: 4D", image_4d, "preprocess"),
    ("segmentation: grid differs from its image", seg_grid_mismatch, "preprocess"),
    ("image: truncated gzip", truncated_gzip, "preprocess"),
    ("image: empty file", empty_file, "preprocess"),
    ("image: enormous (header over the size limit)", enormous_image, "preprocess"),
    ("image: over a configured size limit", over_configured_limit, "preprocess"),
    ("image: NaN voxels", nan_voxels, "preprocess"),
    ("image: not NIfTI", not_nifti, "preprocess"),
]


def _files(root: Path) -> set[str]:
    """Every file and hidden entry under ``root`` (a temporary sibling is hidden: ``fedglioma.atomic``)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() or p.is_symlink() or p.name.startswith(".")}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def _step(kind: str, s: Study) -> list[str]:
    if kind == "labels":
        return ["cohort", "labels", *s.args(), "--site", "A", "--labels", "results/sites/A/labels.tsv",
                "--summary", "results/sites/A/summary.json"]
    prep = f"results/sites/A/prep/sub-{S1}"
    return ["preprocess", "subject", *s.args(), "--site", "A", "--subject", S1, "--final", f"{prep}/06_normalise",
            "--npz", f"{prep}_train.npz", "--grid", f"{prep}_grid.json",
            "--qc-png", f"results/sites/A/qc/sub-{S1}_qc.png", "--qc-json", f"results/sites/A/qc/sub-{S1}_qc.json"]


@pytest.mark.parametrize(("what", "breaks", "step"), REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_input_is_refused(what: str, breaks: Callable[[Study], list[str]], step: str | None, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    s = study(tmp_path)
    expected = breaks(s)
    s.write()
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    rc, out = _run(["cohort", "check-inputs", *s.args()], capsys)
    assert rc != 0, out
    for fragment in [*expected, "Fix:"]:
        assert fragment in out, f"{what}: {fragment!r} not in\n{out}"
    assert "Traceback" not in out
    if step is not None:
        rc, out = _run(_step(step, s), capsys)
        assert rc != 0, out
        assert "Fix:" in out, out
    assert _files(tmp_path) == before, f"{what}: left behind {_files(tmp_path) - before}"


def bom_table(s: Study) -> dict[str, str]:
    s.clinical.write_bytes(b"\xef\xbb\xbf" + s.clinical.read_bytes())
    return {"idh": "1", "grade": "2"}


def semicolon_csv(s: Study) -> dict[str, str]:
    s.clinical.unlink()
    s.rows[0]["clinical"] = "A/clinical.csv"
    (s.a / "clinical.csv").write_text(f"subject;IDH;grade;age\n{S1};mutant;II;45,5\n{S2};wildtype;IV;61,0\n")
    return {"idh": "1", "grade": "2"}


def lps_affine(s: Study) -> dict[str, str]:
    for sid in (S1, S2):
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            img = nib.load(str(s.image(sid, suffix)))
            nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([-1.0, -1.0, 1.0, 1.0])),
                     str(s.image(sid, suffix)))
    return {}


def left_handed_affine(s: Study) -> dict[str, str]:
    for sid in (S1, S2):
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            img = nib.load(str(s.image(sid, suffix)))
            affine = np.diag([-0.9, 0.9, 1.2, 1.0])  # radiological (LAS) storage, determinant < 0
            affine[0, 1] = 1e-5  # rounding in the header: still orthogonal
            nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), str(s.image(sid, suffix)))
    return {}


#: Inputs that look odd but are legal: read as intended.
ACCEPTED: list[tuple[str, Callable[[Study], dict[str, str]]]] = [
    ("clinical: UTF-8 byte-order mark", bom_table),
    ("clinical: semicolon-separated CSV with decimal commas", semicolon_csv),
    ("image: LPS affine", lps_affine),
    ("image: left-handed (radiological) affine", left_handed_affine),
]


@pytest.mark.parametrize(("what", "makes"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_legal_input_is_accepted(what: str, makes: Callable[[Study], dict[str, str]], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    s = study(tmp_path)
    labels = makes(s)
    s.write()
    monkeypatch.chdir(tmp_path)
    rc, out = _run(["cohort", "check-inputs", *s.args()], capsys)
    assert rc == 0, out
    assert "all inputs OK" in out
    if labels:
        assert main(_step("labels", s)) == 0
        first = (tmp_path / "results/sites/A/labels.tsv").read_text().splitlines()
        header, row = first[0].split("\t"), first[1].split("\t")
        got = dict(zip(header, row, strict=True))
        assert got["subject"] == S1
        assert {k: got[k] for k in labels} == labels
