"""Shared fixtures: tiny NIfTI trees in every supported layout, written by the tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# HD-BET creates a per-user data folder on import; keep it inside the test session.
os.environ.setdefault("XDG_DATA_HOME", str(Path(__file__).resolve().parents[1] / ".venv" / "xdg"))

REPO = Path(__file__).resolve().parents[1]


def write_nifti(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None,
                shape: tuple[int, ...] = (8, 9, 10), seed: int = 0) -> Path:
    """Write a small NIfTI (random positive data by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def seg_volume(shape: tuple[int, int, int] = (8, 9, 10), labels: tuple[int, ...] = (1, 2, 4)) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    for i, lab in enumerate(labels):
        seg[2 + i, 3:6, 3:6] = lab
    return seg


# file names of one subject per layout: (folder, {modality: stem}, seg stem)
LAYOUT_FILES: dict[str, Callable[[str], tuple[str, dict[str, str], str]]] = {
    "brats2021": lambda sid: (sid, {"T1": f"{sid}_t1", "T1c": f"{sid}_t1ce", "T2": f"{sid}_t2", "FLAIR": f"{sid}_flair"}, f"{sid}_seg"),
    "brats2023": lambda sid: (sid, {"T1": f"{sid}-t1n", "T1c": f"{sid}-t1c", "T2": f"{sid}-t2w", "FLAIR": f"{sid}-t2f"}, f"{sid}-seg"),
    "ucsf_pdgm": lambda sid: (f"{sid}_nifti", {m: f"{sid}_{m}" for m in ("T1", "T1c", "T2", "FLAIR")}, f"{sid}_tumor_segmentation"),
    "upenn_gbm": lambda sid: (sid, {"T1": f"{sid}_T1", "T1c": f"{sid}_T1GD", "T2": f"{sid}_T2", "FLAIR": f"{sid}_FLAIR"}, f"{sid}_segm"),
    "egd": lambda sid: (sid, {"T1": "T1", "T1c": "T1GD", "T2": "T2", "FLAIR": "FLAIR"}, "MASK"),
}
LAYOUT_IDS = {
    "brats2021": ["BraTS2021_00001", "BraTS2021_00002"],
    "brats2023": ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"],
    "ucsf_pdgm": ["UCSF-PDGM-0001", "UCSF-PDGM-0002"],
    "upenn_gbm": ["UPENN-GBM-00001_11", "UPENN-GBM-00002_11"],
    "egd": ["EGD-0001", "EGD-0002"],
    "nnunet": ["case_001", "case_002"],
}
LAYOUT_LABELS = {"brats2021": (1, 2, 4), "brats2023": (1, 2, 3), "ucsf_pdgm": (1, 2, 4), "upenn_gbm": (1, 2, 4),
                 "egd": (1,), "nnunet": (1, 2, 3)}


def make_site(root: Path, layout: str, *, with_seg: bool = True, clinical: bool = True) -> Path:
    """Write a two-subject site in ``layout`` under ``root`` (plus clinical.tsv)."""
    ids = LAYOUT_IDS[layout]
    for k, sid in enumerate(ids):
        if layout == "nnunet":
            for ch in range(4):
                write_nifti(root / "imagesTr" / f"{sid}_{ch:04d}.nii.gz", seed=k * 10 + ch)
            if with_seg:
                write_nifti(root / "labelsTr" / f"{sid}.nii.gz", seg_volume(labels=LAYOUT_LABELS[layout]))
            continue
        folder, mods, seg = LAYOUT_FILES[layout](sid)
        for j, stem in enumerate(mods.values()):
            write_nifti(root / folder / f"{stem}.nii.gz", seed=k * 10 + j)
        if with_seg:
            write_nifti(root / folder / f"{seg}.nii.gz", seg_volume(labels=LAYOUT_LABELS[layout]))
    if clinical:
        (root / "clinical.tsv").write_text(
            "subject\tIDH\t1p19q\tMGMT\tgrade\n"
            f"{ids[0]}\tmutant\tcodeleted\tmethylated\tWHO grade II\n"
            f"{ids[1]}\twildtype\t\tunmethylated\tIV\n"
        )
    return root


@pytest.fixture
def site_factory(tmp_path: Path) -> Callable[..., Path]:
    def make(layout: str = "brats2021", name: str = "siteA", **kw: bool) -> Path:
        return make_site(tmp_path / name, layout, **kw)

    return make


def write_sites_tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    cols = ["site", "role", "layout", "path", "clinical", "tumour_labels", "skull_stripped", "space"]
    lines = ["\t".join(cols)] + ["\t".join(r.get(c, "") for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- parallel runs (pytest-xdist: `make test` runs `-n 2`) ----
#: Modules that share a session fixture run on one worker, so that it is built once: the tiny workflow
#: (``tiny_run``) and the HD-BET fp32 reference mask (``preprocess_helpers.hdbet_fp32_mask``, cached per process).
SHARED_GROUPS: dict[str, str] = {
    **dict.fromkeys(("test_failed_site", "test_flower", "test_kill_resume", "test_predict", "test_workflow"),
                    "tiny_run"),
    **dict.fromkeys(("test_hdbet_runtime", "test_preprocess"), "hdbet_fp32"),
}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each module is one unit of work for the workers (its module-scoped fixtures are built once), the modules
    of :data:`SHARED_GROUPS` one unit together. (xdist's own ``--dist loadgroup`` did not group under pytest 9.2:
    tests marked with one ``xdist_group`` still went to both workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
            return SHARED_GROUPS.get(module, module)

    return ModuleGroupScheduling(config, log)
