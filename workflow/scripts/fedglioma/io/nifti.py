"""Checked NIfTI loading: every failure names site, subject and file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from fedglioma.errors import InputError


def load_nifti(
    path: str | Path,
    *,
    site: str | None = None,
    subject: str | None = None,
    load_data: bool = True,
    allow_empty: bool = False,
) -> nib.Nifti1Image:
    """Load a 3D NIfTI image and check it is usable.

    Checks: the file exists and is NIfTI (not truncated), the image is 3D (a
    4D image with one volume is squeezed), the affine is finite and invertible,
    and, when ``load_data``, the voxels are finite and not all equal.

    Returns a ``Nifti1Image`` whose data are float32 in memory (when
    ``load_data``) and whose header geometry is the file's.
    """
    p = Path(path)
    ctx = {"site": site, "subject": subject, "file": p}
    if not p.is_file():
        raise InputError("file not found", fix="check the site folder and layout in sites.tsv", **ctx)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise InputError("not a NIfTI file (expected .nii or .nii.gz)", fix="convert it to NIfTI", **ctx)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for junk files
        raise InputError(f"cannot be read as NIfTI ({exc})", fix="re-export the image as NIfTI", **ctx) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"not a NIfTI image ({type(img).__name__})", fix="convert it to NIfTI", **ctx)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
        shape = img.shape
    if len(shape) != 3:
        raise InputError(
            f"image is {len(shape)}D with shape {shape}, expected 3D",
            fix="split the series and give one 3D volume per modality",
            **ctx,
        )
    if min(shape) < 2:
        raise InputError(f"degenerate shape {shape}", fix="give a full 3D volume", **ctx)
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-8:
        raise InputError("affine is not finite or not invertible", fix="repair the NIfTI header (sform/qform)", **ctx)
    if not load_data:
        return img
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(f"image data are truncated or corrupt ({exc})", fix="copy the file again from its source", **ctx) from exc
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{n} voxels are NaN or Inf", fix="re-export the image without NaN/Inf", **ctx)
    if not allow_empty and (data.size == 0 or float(data.max()) == float(data.min())):
        raise InputError("image is empty (all voxels equal)", fix="check the export of this series", **ctx)
    out = nib.Nifti1Image(data, affine, img.header)
    out.set_data_dtype(np.float32)
    return out


def check_same_grid(
    ref: nib.Nifti1Image,
    other: nib.Nifti1Image,
    *,
    site: str | None,
    subject: str | None,
    file: str | Path,
    what: str,
    atol: float = 1e-3,
) -> None:
    """Raise unless ``other`` has the voxel grid (shape and affine) of ``ref``."""
    if ref.shape[:3] != other.shape[:3] or not np.allclose(ref.affine, other.affine, atol=atol):
        raise InputError(
            f"{what} grid (shape {other.shape[:3]}) does not match its image (shape {ref.shape[:3]}) or affine differs",
            site=site,
            subject=subject,
            file=file,
            fix=f"resample the {what} onto its image grid",
        )
