"""The checks that hold a site to what it declared (:class:`fedglioma.declared.Declared`), run on its images at
import and by ``fedglioma cohort check-inputs``: a declared template space must be that template's grid, a
declared skull-stripped image must not show a head."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from fedglioma.declared import Declared
from fedglioma.errors import InputError

#: Largest brain (+ tumour) volume in ml an already skull-stripped image may show; an adult head with skull
#: is 3,000-5,000 ml, a brain with a large tumour and oedema rarely above 1,900 ml.
MAX_STRIPPED_ML = 2500.0
#: Tolerance (mm) when comparing a declared template grid's physical extent with the template's.
GRID_TOL_MM = 1.5


def template_grid_problem(img: nib.Nifti1Image, space: str) -> str | None:
    """Why ``img`` is not on the grid of template ``space`` (None when it is).

    The voxel size must match and the physical box covered by the voxel centres must match the
    template's within :data:`GRID_TOL_MM` per side; the voxel axis order and directions may differ
    (BraTS files store SRI24 in LPS order, the packaged atlas in LAS: the same box in physical space).
    """
    from fedglioma.preprocess.templates import native_template_grid

    shape, affine = native_template_grid(space)
    zooms, tz = voxel_sizes(img.affine), voxel_sizes(affine)
    if sorted(np.round(zooms, 2)) != sorted(np.round(tz, 2)) or sorted(img.shape[:3]) != sorted(shape):
        return (f"grid {tuple(int(n) for n in img.shape[:3])} at {tuple(round(float(z), 2) for z in zooms)} mm "
                f"is not the {space} grid {tuple(shape)} at {tuple(round(float(z), 2) for z in tz)} mm")
    lo, hi = _box(img.affine, img.shape[:3])
    tlo, thi = _box(affine, shape)
    off = float(max(np.abs(lo - tlo).max(), np.abs(hi - thi).max()))
    if off > GRID_TOL_MM:
        return f"its field of view is {off:.1f} mm away from the {space} template's"
    return None


def _box(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    world = (affine @ corners.T).T[:, :3]
    return world.min(axis=0), world.max(axis=0)


def foreground_ml(img: nib.Nifti1Image) -> float:
    """Volume (ml) of the voxels that differ from the image's background: what a skull-stripped site's brain
    mask is made of (:func:`fedglioma.preprocess.skullstrip.differs_from_background`)."""
    from fedglioma.preprocess.skullstrip import differs_from_background

    inside = differs_from_background(np.asarray(img.dataobj, dtype=np.float32))
    return float(inside.sum() * np.prod(voxel_sizes(img.affine)) / 1000.0)


def check_declared(images: Mapping[str, nib.Nifti1Image], declared: Declared, *, site: str, subject: str,
                   files: Mapping[str, str | Path], reference: str = "T1c") -> list[str]:
    """Raise :class:`InputError` when the images contradict ``declared``; return notes for state.json.

    - a template ``space``: every sequence on that template's grid (:func:`template_grid_problem`);
    - ``skull_stripped``: the reference sequence's foreground (everything not background) is at most
      :data:`MAX_STRIPPED_ML` ml; a head with skull is larger.
    """
    notes: list[str] = []
    if declared.in_template:
        for mod, img in images.items():
            why = template_grid_problem(img, declared.space)
            if why:
                raise InputError(f"declared space {declared.space}, but {why}", site=site, subject=subject,
                                 file=files.get(mod), fix="set space to native in sites.tsv (or give the "
                                 f"images as resampled to {declared.space})")
        notes.append(f"every sequence is on the {declared.space} grid")
    if declared.skull_stripped:
        ml = foreground_ml(images[reference])
        if ml > MAX_STRIPPED_ML:
            raise InputError(f"declared skull-stripped, but the {reference} foreground is {ml:.0f} ml (a brain is at "
                             f"most ~{MAX_STRIPPED_ML:.0f} ml): a skull seems present", site=site, subject=subject,
                             file=files.get(reference), fix="set skull_stripped to no for this site in sites.tsv")
        notes.append(f"{reference} foreground {ml:.0f} ml (skull-stripped)")
    return notes
