"""Checked NIfTI loading: every failure names site, subject and file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from fedglioma.constants import MAX_IMAGE_MB
from fedglioma.errors import InputError

#: Largest deviation (degrees) of the angle between two voxel axes from 90: a larger one is a sheared grid
#: (e.g. a gantry-tilted series exported without correction), which the steps cannot handle. Flipped axes
#: (LPS, LAS, a negative determinant) are legal and accepted: import reorients every image to RAS.
MAX_SHEAR_DEG = 1.0


def shear_deg(affine: np.ndarray) -> float:
    """Largest deviation (degrees) from 90 of the angle between two voxel axes of ``affine`` (0 = orthogonal)."""
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cos = np.abs(cols.T @ cols - np.eye(3)).max()
    return float(np.degrees(np.arcsin(min(cos, 1.0))))


def image_mb(header: nib.Nifti1Header) -> float:
    """MiB of voxel data the header declares (shape x data type), without reading them."""
    return float(np.prod(header.get_data_shape(), dtype=float) * header.get_data_dtype().itemsize / 2**20)


def load_nifti(
    path: str | Path,
    *,
    site: str | None = None,
    subject: str | None = None,
    load_data: bool = True,
    allow_empty: bool = False,
    max_mb: float = MAX_IMAGE_MB,
) -> nib.Nifti1Image:
    """Load a 3D NIfTI image and check it is usable.

    Checks: the file exists, is not empty and is NIfTI (not truncated), the voxel data the header declares are
    at most ``max_mb`` MiB (config ``inputs.max_image_mb``; checked before any data are read), the image is 3D
    (a 4D image with one volume is squeezed), the affine is finite, invertible and not sheared (voxel axes
    within :data:`MAX_SHEAR_DEG` of orthogonal; flipped axes are fine), and, when ``load_data``, the voxels are
    finite and not all equal.

    Returns a ``Nifti1Image`` whose data are float32 in memory (when
    ``load_data``) and whose header geometry is the file's.
    """
    p = Path(path)
    ctx = {"site": site, "subject": subject, "file": p}
    if not p.is_file():
        raise InputError("file not found", fix="check the site folder and layout in sites.tsv", **ctx)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise InputError("not a NIfTI file (expected .nii or .nii.gz)", fix="convert it to NIfTI", **ctx)
    if p.stat().st_size == 0:
        raise InputError("the file is empty (0 bytes)", fix="copy the file again from its source", **ctx)
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for junk files
        raise InputError(f"cannot be read as NIfTI ({exc})", fix="re-export the image as NIfTI", **ctx) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"not a NIfTI image ({type(img).__name__})", fix="convert it to NIfTI", **ctx)
    mb = image_mb(img.header)
    if mb > max_mb:
        size = f"{mb:,.0f}" if mb >= 10 else f"{mb:.2g}"
        raise InputError(f"the header declares {img.header.get_data_shape()} voxels of {img.header.get_data_dtype()}, "
                         f"{size} MiB, over the limit inputs.max_image_mb = {max_mb:g}",
                         fix="check the header's dimensions, crop or resample the image, or raise "
                         "inputs.max_image_mb in config.yaml", **ctx)
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
    shear = shear_deg(affine)
    if shear > MAX_SHEAR_DEG:
        raise InputError(f"voxel axes are not orthogonal (sheared by {shear:.1f} degrees; at most {MAX_SHEAR_DEG:g} "
                         "is accepted)", fix="resample the image onto an orthogonal grid, or convert it again from "
                         "DICOM with dcm2niix (which corrects gantry tilt)", **ctx)
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
