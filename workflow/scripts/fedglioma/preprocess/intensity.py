"""Steps 5 and 6: N4 bias-field correction and intensity normalisation (inside the brain mask).

Neither assumes a zero background on input: only brain-mask voxels are used, and the
background is set to 0 after normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

from fedglioma.atomic import atomic_dir
from fedglioma.constants import MODALITIES
from fedglioma.errors import InputError
from fedglioma.preprocess.common import (
    bbox,
    like,
    read_step,
    timer,
    to_ants,
    write_step,
)
from fedglioma.settings import N4Config, NormaliseSection, PercentileConfig, ZScoreConfig, section, section_params

log = logging.getLogger("fedglioma.preprocess.intensity")

# --------------------------------------------------------------------------- N4

def n4_correct(img: nib.Nifti1Image, mask: nib.Nifti1Image, **params: Any) -> tuple[nib.Nifti1Image, float]:
    """N4 bias-field correction of ``img`` inside ``mask`` (outside the mask the image is unchanged).

    N4 works on the log of the intensities, so when the brain holds values <= 0 (z-scored
    inputs) they are shifted to be positive for N4 and shifted back after; the shift is returned.
    ``params``: the ``preprocess.n4`` keys (:class:`~fedglioma.settings.N4Config`).
    """
    import ants

    p = section_params(N4Config, params, "preprocess.n4")
    data = np.asarray(img.dataobj, dtype=np.float32)
    inside = np.asarray(mask.dataobj) > 0
    if not inside.any():
        raise ValueError("empty brain mask")
    vals = data[inside]
    lo, hi = float(vals.min()), float(vals.max())
    shift = 0.0
    if lo <= 0:
        shift = -lo + 0.01 * max(hi - lo, 1e-6)
    # N4 only fits inside the mask, but shrinks and reconstructs the whole grid: crop to the mask
    lo, hi = bbox(inside)
    lo, hi = np.maximum(lo - 2, 0), np.minimum(hi + 2, inside.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sub_aff = np.asarray(img.affine, dtype=float).copy()
    sub_aff[:3, 3] = sub_aff[:3, :3] @ lo + sub_aff[:3, 3]
    work = np.where(inside[box], data[box] + shift, 0).astype(np.float32)
    out = ants.n4_bias_field_correction(
        to_ants(work, sub_aff),
        mask=to_ants(inside[box].astype(np.float32), sub_aff),
        shrink_factor=int(p["shrink_factor"]),
        convergence={"iters": [int(i) for i in p["iterations"]], "tol": float(p["tolerance"])},
        spline_param=p["spline_param"],
    )
    corrected = data.copy()
    corrected[box] = out.numpy() - shift
    return like(img, np.where(inside, corrected, data).astype(np.float32)), shift


def n4(in_dir: Path, out_dir: Path, *, site: str, subject: str, **params: Any) -> None:
    """N4 bias-field correction of every modality inside the brain mask (``skip: true`` copies the data)."""
    p = section_params(N4Config, params, "preprocess.n4")
    sub = read_step(in_dir, site=site, subject=subject, need_brain=True)
    assert sub.brain is not None
    with atomic_dir(out_dir) as tmp:
        shifts: dict[str, float] = {}
        with timer() as t:
            if not p["skip"]:
                for m in MODALITIES:
                    sub.images[m], shifts[m] = n4_correct(sub.images[m], sub.brain, **{k: v for k, v in p.items() if k != "skip"})
        sub.state.add_step("n4", params=p, skipped=bool(p["skip"]), seconds=t["seconds"],
                           reason="preprocess.n4.skip is set" if p["skip"] else None, shifts=shifts)
        write_step(tmp, sub, subject=subject)


# --------------------------------------------------------------------------- normalisation


class Normaliser:
    """Intensity normaliser: ``normaliser(image, mask) -> image``; background (mask 0) becomes 0."""

    name: ClassVar[str] = "base"

    def __init__(self, **params: Any) -> None:
        self.params = params

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _brain(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inside = np.asarray(mask) > 0
        if not inside.any():
            raise ValueError("empty brain mask")
        return np.asarray(image, dtype=np.float64), inside


class ZScore(Normaliser):
    """Clip to the ``clip`` percentiles of the brain voxels, then z-score inside the brain:
    brain voxels have mean 0 and standard deviation 1 exactly, background is 0."""

    name = "zscore"

    def __init__(self, clip: Sequence[float] | None) -> None:
        super().__init__(clip=clip)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x, inside = self._brain(image, mask)
        v = x[inside]
        if self.clip is not None:
            lo, hi = np.percentile(v, self.clip)
            v = np.clip(v, lo, hi)
        sd = float(v.std())
        out = np.zeros(x.shape, dtype=np.float32)
        out[inside] = (v - v.mean()) / (sd if sd > 0 else 1.0)
        return out


class PercentileScale(Normaliser):
    """Map the ``percentiles`` of the brain voxels to 0 and 1 (clipped); background is 0."""

    name = "percentile"

    def __init__(self, percentiles: Sequence[float]) -> None:
        super().__init__(percentiles=percentiles)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x, inside = self._brain(image, mask)
        v = x[inside]
        lo, hi = np.percentile(v, self.percentiles)
        out = np.zeros(x.shape, dtype=np.float32)
        out[inside] = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        return out


NORMALISERS: dict[str, type[Normaliser]] = {"zscore": ZScore, "percentile": PercentileScale}


def make_normaliser(cfg: ZScoreConfig | PercentileConfig) -> Normaliser:
    """The normaliser a validated ``preprocess.normalise`` section names, with its options."""
    return NORMALISERS[cfg.method](**cfg.model_dump(mode="json", exclude={"method"}))


def normalise(in_dir: Path, out_dir: Path, *, site: str, subject: str, **params: Any) -> None:
    """Normalise every modality inside the brain mask with the normaliser of ``params`` (the
    ``preprocess.normalise`` keys: ``method``, zscore by default, and its options)."""
    norm = make_normaliser(section(NormaliseSection, params, "preprocess.normalise").root)
    sub = read_step(in_dir, site=site, subject=subject, need_brain=True)
    assert sub.brain is not None
    mask = np.asarray(sub.brain.dataobj) > 0
    if not mask.any():
        raise InputError("the brain mask is empty", site=site, subject=subject, file=Path(in_dir),
                         fix="check the skull-stripping output of this subject")
    with atomic_dir(out_dir) as tmp:
        with timer() as t:
            for m in MODALITIES:
                sub.images[m] = like(sub.images[m], norm(np.asarray(sub.images[m].dataobj), mask))
        sub.state.add_step("normalise", params={"method": norm.name, **norm.params}, seconds=t["seconds"])
        write_step(tmp, sub, subject=subject)
