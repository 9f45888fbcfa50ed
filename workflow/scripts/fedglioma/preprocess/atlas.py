"""Step 4, register_atlas: T1c brain -> brain template, applied to every image and mask.

The transform files stay in ``<step>/xfm/`` (paths relative to the subject folder in
state.json) so network-grid outputs can be mapped back to native space.
Sites whose ``space`` already is the configured template skip the registration:
identity, data unchanged, recorded in state.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedglioma.atomic import atomic_dir
from fedglioma.constants import MODALITIES
from fedglioma.preprocess.common import (
    REFERENCE,
    check_unknown_params,
    from_ants,
    grid_of,
    read_step,
    rel_to_subject,
    timer,
    to_ants,
    write_step,
)
from fedglioma.preprocess.registration import Registration, check_transform, register, schedule
from fedglioma.preprocess.templates import load_template

log = logging.getLogger("fedglioma.preprocess.atlas")

DEFAULTS: dict[str, Any] = {
    "template": "MNI152",
    "template_path": None,
    "template_mask_path": None,
    "resolution_mm": 1.0,
    "type_of_transform": "Affine",
    "working_resolution_mm": 2.0,
    "use_template_mask": True,
    "shrink": [4, 2, 1],
    "smoothing": [2, 1, 0],
    "iterations": [100, 50, 25],
    "sampling": 32,
    "sampling_rate": 0.2,
    "syn_iterations": [40, 20, 0],
    "interpolator": "linear",
    "seed": 1,
}


def register_to_template(
    image: nib.Nifti1Image,
    brain: nib.Nifti1Image,
    template: nib.Nifti1Image,
    template_mask: nib.Nifti1Image | None = None,
    *,
    workdir: Path,
    dest: Path,
    params: dict[str, Any] | None = None,
) -> Registration:
    """Register the brain-masked ``image`` onto ``template`` (which must be brain-only).

    Voxels outside ``brain`` are set to 0 first, so the site's background value does not matter.
    """
    p = {**DEFAULTS, **(params or {})}
    check_transform(p["type_of_transform"])
    kw = schedule(p)
    data = np.asarray(image.dataobj, dtype=np.float32)
    inside = np.asarray(brain.dataobj) > 0
    lo = float(data[inside].min()) if inside.any() else 0.0
    moving = to_ants(np.where(inside, data - lo, 0).astype(np.float32), image.affine)
    fmask = None
    if template_mask is not None and p["use_template_mask"]:
        fmask = to_ants(np.asarray(template_mask.dataobj, dtype=np.float32), template_mask.affine)
    return register(to_ants(template), moving, workdir=workdir, dest=dest, stem="T1c_to_template_",
                    type_of_transform=p["type_of_transform"], kwargs=kw, seed=p["seed"],
                    working_resolution_mm=p["working_resolution_mm"], fixed_mask=fmask)


def register_atlas(
    in_dir: Path,
    out_dir: Path,
    *,
    site: str,
    subject: str,
    site_space: str = "native",
    **params: Any,
) -> None:
    """Register the T1c brain to the template and resample every modality and mask into template space.

    Modalities: ``interpolator`` (linear); masks: ``genericLabel`` then > 0.5.
    When ``site_space`` equals the template name the step is skipped (identity); any other
    space (``native``, another template) is registered.
    """
    import ants

    check_unknown_params(params, set(DEFAULTS), "register_atlas")
    p = {**DEFAULTS, **params}
    out_dir = Path(out_dir)
    name = str(p["template"])
    sub = read_step(in_dir, site=site, subject=subject, need_brain=True)
    assert sub.brain is not None
    with atomic_dir(out_dir) as tmp:
        if site_space == name:
            with timer() as t:
                pass
            sub.state.transforms["atlas"] = {"template": name, "identity": True, "forward": [], "inverse": [],
                                             "whichtoinvert": [], "template_grid": grid_of(sub.reference)}
            sub.state.add_step("register_atlas", params=p, skipped=True, seconds=t["seconds"],
                               reason=f"site space is already {name}: identity transform, images unchanged")
            write_step(tmp, sub, subject=subject)
            return
        with timer() as t:
            tpl = load_template(name, resolution_mm=float(p["resolution_mm"]), path=p["template_path"],
                                mask_path=p["template_mask_path"])
            reg = register_to_template(sub.reference, sub.brain, tpl.image, tpl.mask, workdir=tmp, dest=tmp / "xfm", params=p)
            fixed = to_ants(tpl.image)
            fwd = [str(f) for f in reg.forward]
            ref_hdr = nib.Nifti1Image(np.zeros(tpl.image.shape, np.float32), tpl.image.affine)
            for m in MODALITIES:
                out = ants.apply_transforms(fixed, to_ants(sub.images[m]), fwd, interpolator=p["interpolator"])
                sub.images[m] = from_ants(out, like_img=ref_hdr)
            for attr in ("brain", "tumour"):
                mask = getattr(sub, attr)
                if mask is not None:
                    out = ants.apply_transforms(fixed, to_ants(mask), fwd, interpolator="genericLabel")
                    setattr(sub, attr, nib.Nifti1Image((out.numpy() > 0.5).astype(np.uint8), tpl.image.affine))
            sub.state.transforms["atlas"] = {
                "template": name,
                "template_source": tpl.source,
                "identity": False,
                "forward": [rel_to_subject(out_dir, "xfm", f.name) for f in reg.forward],
                "inverse": [rel_to_subject(out_dir, "xfm", f.name) for f in reg.inverse],
                "whichtoinvert": reg.inverse_invert,
                "template_grid": grid_of(tpl.image),
                "moving": REFERENCE,
            }
        sub.state.add_step("register_atlas", params=p, seconds=t["seconds"], registration=reg.params,
                           site_space=site_space)
        write_step(tmp, sub, subject=subject)
