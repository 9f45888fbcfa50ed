"""One job per subject: the preprocessing chain, its checkpoints, and one route from rule and subcommand."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from fedglioma.config import load_config, load_sites
from fedglioma.constants import MODALITIES
from fedglioma.preprocess import chain as chain_mod
from fedglioma.preprocess.chain import CHAIN, preprocess_subject, subject_outputs
from tests.unit.preprocess_helpers import make_phantom

REPO = Path(__file__).resolve().parents[2]
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


class Named(dict):
    """What a Snakemake ``Namedlist`` offers an entry: items by attribute, ``get``, ``dict()``."""

    __getattr__ = dict.__getitem__


def _mtimes(subject_dir: Path) -> dict[str, int]:
    return {folder: (subject_dir / folder / "state.json").stat().st_mtime_ns for _, folder, _ in CHAIN}


def test_chain_writes_every_output_and_resumes_from_the_first_changed_or_unfinished_step(tmp_path, monkeypatch):
    row = {r.site: r for r in load_sites(brats_site(tmp_path))}["A"]
    out = subject_outputs(tmp_path / "results", "A", SID)
    run = dict(row=row, subject=SID, out=out, preprocess=PREPROCESS, qc={})

    preprocess_subject(**run)
    for path in (out.final / "state.json", out.npz, out.grid, out.qc_png, out.qc_json):
        assert path.is_file(), path
    first = _mtimes(out.subject_dir)
    npz_first = out.npz.stat().st_mtime_ns

    preprocess_subject(**run)  # nothing changed: every step folder is kept, the cheap outputs are rewritten
    assert _mtimes(out.subject_dir) == first and out.npz.stat().st_mtime_ns > npz_first

    # a changed N4 parameter redoes N4 and what reads it, nothing before
    changed = {**PREPROCESS, "n4": {**PREPROCESS["n4"], "shrink_factor": 3}}
    preprocess_subject(**{**run, "preprocess": changed})
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


def test_rule_entry_and_subcommand_call_the_chain_the_same_way(tmp_path, monkeypatch) -> None:
    """`fedglioma preprocess-subject` and workflow/scripts/preprocess_subject.py (what rule preprocess_subject
    runs, with the params common.smk gives it) reach preprocess_subject with equal arguments."""
    from fedglioma.cli import main
    from fedglioma.config import layout_options

    tsv = tmp_path / "sites.tsv"
    tsv.write_text("site\trole\tlayout\tpath\tskull_stripped\tspace\nB\ttrain\tbrats2021\tb\tyes\tSRI24\n"
                   "X\texternal\tbrats2021\tx\tno\tnative\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"sites": str(tsv), "preprocess": {"n4": {"shrink_factor": 3}}}))
    config = load_config(cfg)
    row = {r.site: r for r in load_sites(tsv)}["B"]
    (tmp_path / "results" / "templates" / "SRI24_to_MNI152").mkdir(parents=True)
    calls: list[dict] = []
    monkeypatch.setattr(chain_mod, "preprocess_subject", lambda *a, **k: calls.append({"args": a, **k}))
    monkeypatch.chdir(tmp_path)

    assert main(["preprocess-subject", "--config", str(cfg), "--site", "B", "--subject", SID]) == 0
    pattern = subject_outputs("results", "{site}", "{subject}").paths()  # the rule's outputs (common.smk: PREP)
    output = {k: pattern[v].format(site="B", subject=SID) for k, v in
              {"step": "final", "npz": "npz", "grid": "grid", "qc_png": "qc_png", "qc_row": "qc_json"}.items()}
    smk = SimpleNamespace(
        log=[], threads=1, rule="preprocess_subject", wildcards=Named(site="B", subject=SID),
        input=Named(template_transform="results/templates/SRI24_to_MNI152"),
        output=Named(output),
        params=SimpleNamespace(row=row, layout_options=layout_options(row, config), preprocess=config["preprocess"],
                               qc=config["qc"]))
    runpy.run_path(str(REPO / "workflow" / "scripts" / "preprocess_subject.py"), init_globals={"snakemake": smk})
    assert len(calls) == 2
    for c in calls:
        c["template_transform"] = Path(c["template_transform"])
    assert calls[0] == calls[1]
    assert calls[0]["preprocess"]["n4"]["shrink_factor"] == 3


def test_rule_passes_what_the_entry_reads() -> None:
    """Rule preprocess_subject gives its entry the site's row, layout options and the config sections."""
    text = (REPO / "workflow" / "rules" / "preprocess.smk").read_text()
    block = text.split("rule preprocess_subject:")[1].split("\nrule ")[0]
    for line in ('row=get_site_row', 'layout_options=layout_options', 'preprocess=config["preprocess"]',
                 'qc=config["qc"]', '"../scripts/preprocess_subject.py"', 'unpack(get_template_transform)'):
        assert line in block, line


def test_subject_needing_a_missing_template_transform_gets_the_fix(tmp_path, monkeypatch) -> None:
    from fedglioma.cli import main

    tsv = tmp_path / "sites.tsv"
    tsv.write_text("site\trole\tlayout\tpath\tskull_stripped\tspace\nB\ttrain\tbrats2021\tb\tyes\tSRI24\n"
                   "X\texternal\tbrats2021\tx\tno\tnative\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"sites": str(tsv)}))
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess-subject", "--config", str(cfg), "--site", "B", "--subject", SID]) != 0
