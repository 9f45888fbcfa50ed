"""Step 2, coregister: rigid registration of T1, T2 and FLAIR onto the T1c (same session).

Every output is on the T1c grid. The tumour mask must already be on the T1c grid
(it is checked at import) and is kept as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib

from fedglioma.atomic import atomic_dir
from fedglioma.constants import MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import InputError
from fedglioma.preprocess.common import (
    REFERENCE,
    from_ants,
    read_step,
    rel_to_subject,
    same_grid,
    timer,
    to_ants,
    tumour_name,
    write_step,
)
from fedglioma.preprocess.registration import register, schedule
from fedglioma.settings import CoregisterConfig, section_params

log = logging.getLogger("fedglioma.preprocess.coregister")



def rigid_to_reference(
    fixed: nib.Nifti1Image,
    moving: nib.Nifti1Image,
    *,
    workdir: Path,
    dest: Path,
    stem: str,
    params: Mapping[str, Any],
) -> tuple[nib.Nifti1Image, list[Path]]:
    """Rigidly register ``moving`` onto ``fixed`` and resample it onto the fixed grid.

    ``params`` are the step's validated parameters (:class:`~fedglioma.settings.CoregisterConfig`, every key).
    Returns the resampled image (exactly ``fixed``'s affine and header) and the
    forward transform files (moving -> fixed) kept under ``dest``.
    """
    import ants

    kw = schedule(dict(params))
    if params["init"] == "identity":
        kw["initial_transform"] = "Identity"
    fa, ma = to_ants(fixed), to_ants(moving)
    reg = register(fa, ma, workdir=workdir, dest=dest, stem=stem, type_of_transform=params["transform"], kwargs=kw,
                   seed=params["seed"], working_resolution_mm=params["working_resolution_mm"])
    out = ants.apply_transforms(fa, ma, [str(f) for f in reg.forward], interpolator=params["interpolator"])
    return from_ants(out, like_img=fixed), reg.forward


def coregister(in_dir: Path, out_dir: Path, *, site: str, subject: str, declared: Declared | None = None,
               **params: Any) -> None:
    """Rigidly register T1, T2, FLAIR onto T1c; resample them onto the T1c grid.

    When the site declares its sequences co-registered (``coregistered: yes``, or a template
    ``space``: BraTS, UPENN-GBM, EGD, UCSF-PDGM), or ``skip: true`` is configured, no registration
    runs: modalities already on the T1c grid are copied unchanged and others are
    resampled onto it by their headers alone. Transform files are kept in
    ``<out_dir>/xfm/<mod>_to_T1c_0GenericAffine.mat`` (relative paths in state.json).
    """
    import ants

    p = section_params(CoregisterConfig, params, "preprocess.coregister")
    out_dir = Path(out_dir)
    declared = declared or Declared()
    skip = bool(p["skip"]) or declared.is_coregistered
    if declared.is_coregistered:
        reason = (f"site declared space {declared.space}: sequences co-registered by construction"
                  if declared.in_template else "site declared coregistered")
    else:
        reason = "preprocess.coregister.skip is set" if p["skip"] else None
    sub = read_step(in_dir, site=site, subject=subject)
    fixed = sub.reference
    if sub.tumour is not None and not same_grid(sub.tumour, fixed):
        raise InputError(
            "the tumour mask is not on the T1c grid",
            site=site,
            subject=subject,
            file=Path(in_dir) / tumour_name(subject),
            fix="give the segmentation on the T1c (co-registered image) grid",
        )
    with atomic_dir(out_dir) as tmp:
        with timer() as t:
            xfm: dict[str, list[str]] = {}
            how: dict[str, str] = {}
            for m in MODALITIES:
                if m == REFERENCE:
                    continue
                moving = sub.images[m]
                if skip:
                    if same_grid(moving, fixed):
                        how[m] = "unchanged (already on the T1c grid)"
                        continue
                    res = ants.resample_image_to_target(to_ants(moving), to_ants(fixed), interp_type=p["interpolator"])
                    sub.images[m] = from_ants(res, like_img=fixed)
                    how[m] = "resampled onto the T1c grid by header geometry (no registration)"
                    continue
                sub.images[m], files = rigid_to_reference(
                    fixed, moving, workdir=tmp, dest=tmp / "xfm", stem=f"{m}_to_{REFERENCE}_", params=p
                )
                xfm[m] = [rel_to_subject(out_dir, "xfm", f.name) for f in files]
                how[m] = f"{p['transform']} registration onto T1c"
            sub.state.transforms["coregister"] = xfm
        sub.state.add_step(
            "coregister",
            params=p,
            skipped=skip,
            reason=reason,
            seconds=t["seconds"],
            modalities=how,
        )
        write_step(tmp, sub, subject=subject)
