"""Step 4, register_atlas: T1c brain -> brain template, applied to every image and mask.

The transform files stay in ``<step>/xfm/`` (paths relative to the subject folder in
state.json) so network-grid outputs can be mapped back to native space.
What a site declares (:class:`~fedglioma.declared.Declared`) decides what runs:

- ``space: native``: the T1c brain is registered to the template (one registration per subject);
- ``space`` = the configured template: no registration, the images are resampled onto the template
  grid at ``resolution_mm`` by their headers (identity);
- another template space (e.g. SRI24 while the network works in MNI152): no registration per subject;
  the one template-to-template affine (:func:`~fedglioma.preprocess.templates.template_transform`,
  computed once per template pair) is applied to every subject.

Every skip is recorded in state.json with its reason.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedglioma.atomic import atomic_dir
from fedglioma.constants import MODALITIES
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError
from fedglioma.preprocess.common import (
    REFERENCE,
    from_ants,
    grid_of,
    read_step,
    rel_to_subject,
    timer,
    to_ants,
    write_step,
)
from fedglioma.preprocess.registration import Registration, check_transform, register, schedule
from fedglioma.preprocess.templates import load_template, template_transform_file
from fedglioma.settings import AtlasConfig, section_params

log = logging.getLogger("fedglioma.preprocess.atlas")

def register_to_template(
    image: nib.Nifti1Image,
    brain: nib.Nifti1Image,
    template: nib.Nifti1Image,
    template_mask: nib.Nifti1Image | None = None,
    *,
    workdir: Path,
    dest: Path,
    params: Mapping[str, Any],
) -> Registration:
    """Register the brain-masked ``image`` onto ``template`` (which must be brain-only).

    ``params`` are the step's validated parameters (:class:`~fedglioma.settings.AtlasConfig`, every key).
    Voxels outside ``brain`` are set to 0 first, so the site's background value does not matter.
    """
    p = params
    check_transform(p["type_of_transform"])
    kw = schedule(dict(p))
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
    declared: Declared | None = None,
    template_transform: str | Path | None = None,
    **params: Any,
) -> None:
    """Bring the subject into template space: every modality (``interpolator``, linear) and mask
    (``genericLabel``, then > 0.5) on the template grid at ``resolution_mm``.

    ``declared.space`` decides how (module docstring); ``template_transform`` is the folder written by
    :func:`~fedglioma.preprocess.templates.template_transform` for ``declared.space`` -> template, needed
    only when the two differ and neither is native.
    """
    import ants

    p = section_params(AtlasConfig, params, "preprocess.atlas")
    declared = declared or Declared()
    out_dir = Path(out_dir)
    name = str(p["template"])
    sub = read_step(in_dir, site=site, subject=subject, need_brain=True)
    assert sub.brain is not None
    space = declared.space
    if space not in ("native", name) and template_transform is None:
        raise ConfigError(f"site {site} is in {space} space and the network works in {name}: register_atlas "
                          f"needs the {space}_to_{name} template transform (rule template_transform)")
    with atomic_dir(out_dir) as tmp:
        with timer() as t:
            tpl = load_template(name, resolution_mm=float(p["resolution_mm"]), path=p["template_path"],
                                mask_path=p["template_mask_path"])
            fixed = to_ants(tpl.image)
            record: dict[str, Any] = {"template": name, "template_source": tpl.source, "template_grid": grid_of(tpl.image),
                                      "moving": REFERENCE, "space": space}
            reg = None
            if space == "native":
                reg = register_to_template(sub.reference, sub.brain, tpl.image, tpl.mask, workdir=tmp,
                                           dest=tmp / "xfm", params=p)
                fwd = [str(f) for f in reg.forward]
                record.update(identity=False,
                              forward=[rel_to_subject(out_dir, "xfm", f.name) for f in reg.forward],
                              inverse=[rel_to_subject(out_dir, "xfm", f.name) for f in reg.inverse],
                              whichtoinvert=reg.inverse_invert)
            elif space == name:
                fwd = []
                record.update(identity=True, forward=[], inverse=[], whichtoinvert=[])
            else:
                (tmp / "xfm").mkdir(parents=True, exist_ok=True)
                mat = tmp / "xfm" / f"{space}_to_{name}_0GenericAffine.mat"
                shutil.copyfile(template_transform_file(template_transform), mat)
                fwd = [str(mat)]
                rel = rel_to_subject(out_dir, "xfm", mat.name)
                record.update(identity=False, template_transform=f"{space}_to_{name}", forward=[rel], inverse=[rel],
                              whichtoinvert=[True])
            def to_template(img: nib.Nifti1Image, interpolator: str) -> ants.ANTsImage:
                """``img`` on the template grid through ``fwd``, or by its header when there is no transform."""
                if fwd:
                    return ants.apply_transforms(fixed, to_ants(img), fwd, interpolator=interpolator)
                return ants.resample_image_to_target(to_ants(img), fixed, interp_type=interpolator)

            ref_hdr = nib.Nifti1Image(np.zeros(tpl.image.shape, np.float32), tpl.image.affine)
            for m in MODALITIES:
                sub.images[m] = from_ants(to_template(sub.images[m], p["interpolator"]), like_img=ref_hdr)
            for attr in ("brain", "tumour"):
                mask = getattr(sub, attr)
                if mask is not None:
                    out = to_template(mask, "genericLabel")
                    setattr(sub, attr, nib.Nifti1Image((out.numpy() > 0.5).astype(np.uint8), tpl.image.affine))
            sub.state.transforms["atlas"] = record
        if space == "native":
            assert reg is not None
            sub.state.add_step("register_atlas", params=p, seconds=t["seconds"], registration=reg.params,
                               site_space=space)
        elif space == name:
            sub.state.add_step("register_atlas", params=p, skipped=True, seconds=t["seconds"], site_space=space,
                               reason=f"site declared space {name}: no registration, resampled onto the "
                                      f"{p['resolution_mm']} mm template grid by header")
        else:
            sub.state.add_step("register_atlas", params=p, skipped=True, seconds=t["seconds"], site_space=space,
                               reason=f"site declared space {space}: no registration per subject, the "
                                      f"{space}_to_{name} template transform (computed once) applied")
        write_step(tmp, sub, subject=subject)
