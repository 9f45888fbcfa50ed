"""One job per subject: the preprocessing chain and its checkpoints (its route: tests/unit/test_registry.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedglioma.config import load_sites
from fedglioma.constants import MODALITIES
from fedglioma.preprocess.chain import CHAIN, preprocess_subject, subject_outputs
from tests.unit.preprocess_helpers import make_phantom

SID = "BraTS2021_00001"
#: Small but real parameters: 3 mm phantom, atlas registration at 3 mm, a short N4, a 64^3 grid.
PREPROCESS = {
    "coregister": {"skip": True},
    "skullstrip": {},
    "atlas": {"resolution_mm": 3.0},
    "n4": {"shrink_factor": 4, "iterations": [20, 10]},
    "normalise": {},
    "grid": {"grid_spacing": 3.0, "grid_shape": 64},
}


def brats_site(root: Path) -> Path:
    """A skull-stripped BraTS 2021 site of one subject (phantom brain, 3 mm); returns sites.tsv."""
    import nibabel as nib

    ph = make_phantom(3, seed=1, skull=False)
    sub = root / "site" / SID
    sub.mkdir(parents=True)
    names = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}
    for m in MODALITIES:
        nib.save(nib.Nifti1Image(ph.images[m].astype(np.float32), ph.affine), sub / f"{SID}_{names[m]}.nii.gz")
    nib.save(nib.Nifti1Image(ph.seg.astype(np.uint8), ph.affine), sub / f"{SID}_seg.nii.gz")
    tsv = root / "sites.tsv"
    tsv.write_text("site\trole\tlayout\tpath\tskull_stripped\nA\ttrain\tbrats2021\t" + str(root / "site") + "\tyes\n"
                   "X\texternal\tbrats2021\tx\tno\n")
    return tsv


def _mtimes(subject_dir: Path) -> dict[str, int]:
    return {folder: (subject_dir / folder / "state.json").stat().st_mtime_ns for _, folder, _ in CHAIN}


def test_chain_writes_every_output_and_resumes_from_the_first_changed_or_unfinished_step(tmp_path, monkeypatch):
    row = {r.site: r for r in load_sites(brats_site(tmp_path))}["A"]
    out = subject_outputs(tmp_path / "results", "A", SID)
    paths = {k: v for k, v in out.paths().items() if k != "subject_dir"}
    run = dict(row=row, subject=SID, **paths, preprocess_cfg=PREPROCESS, qc_cfg={}, layouts_cfg={})

    preprocess_subject(**run)
    for path in (out.final / "state.json", out.npz, out.grid, out.qc_png, out.qc_json):
        assert path.is_file(), path
    first = _mtimes(out.subject_dir)
    npz_first = out.npz.stat().st_mtime_ns

    preprocess_subject(**run)  # nothing changed: every step folder is kept, the cheap outputs are rewritten
    assert _mtimes(out.subject_dir) == first and out.npz.stat().st_mtime_ns > npz_first

    # a changed N4 parameter redoes N4 and what reads it, nothing before
    changed = {**PREPROCESS, "n4": {**PREPROCESS["n4"], "shrink_factor": 3}}
    preprocess_subject(**{**run, "preprocess_cfg": changed})
    now = _mtimes(out.subject_dir)
    redone = {f for f in now if now[f] != first[f]}
    assert redone == {"05_n4", "06_normalise"}

    # an interrupted job (normalisation fails) resumes at normalisation: N4 is kept
    import fedglioma.preprocess.intensity as intensity

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(intensity, "normalise", boom)
    with pytest.raises(RuntimeError, match="killed"):
        preprocess_subject(**run)
    monkeypatch.undo()
    n4_redone = (out.subject_dir / "05_n4" / "state.json").stat().st_mtime_ns
    assert n4_redone > now["05_n4"] and not (out.subject_dir / ".06_normalise.json").exists()
    preprocess_subject(**run)
    assert (out.subject_dir / "05_n4" / "state.json").stat().st_mtime_ns == n4_redone
    assert _mtimes(out.subject_dir)["01_import"] == first["01_import"]

    # a changed raw file redoes the whole chain
    raw = tmp_path / "site" / SID / f"{SID}_t1.nii.gz"
    raw.write_bytes(raw.read_bytes())
    preprocess_subject(**run)
    assert all(v != first[k] for k, v in _mtimes(out.subject_dir).items())


def test_site_in_another_template_without_its_transform_gets_the_fix(tmp_path) -> None:
    """An SRI24 site needs the SRI24-to-MNI152 transform: without it the job fails first, naming the command."""
    from fedglioma.errors import ConfigError

    tsv = tmp_path / "sites.tsv"
    tsv.write_text("site\trole\tlayout\tpath\tskull_stripped\tspace\nB\ttrain\tbrats2021\tb\tyes\tSRI24\n"
                   "X\texternal\tbrats2021\tx\tno\tnative\n")
    row = {r.site: r for r in load_sites(tsv)}["B"]
    paths = {k: v for k, v in subject_outputs(tmp_path, "B", SID).paths().items() if k != "subject_dir"}
    with pytest.raises(ConfigError, match="template-transform --source SRI24 --target MNI152"):
        preprocess_subject(row, SID, **paths, preprocess_cfg={"atlas": {"template": "MNI152"}}, qc_cfg={},
                           layouts_cfg={})
    assert not (tmp_path / "sites").exists()
