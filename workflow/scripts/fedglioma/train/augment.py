"""Batch augmentation on the training device, driven by a seeded CPU generator.

Every sample draws the same number of random numbers whatever the branches taken, so the random stream (and
thus training) is reproducible and independent of the device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fedglioma.settings import AugmentConfig


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """``(3,)`` angles (radians) about the three axes -> ``(3, 3)`` rotation matrix ``Rz @ Ry @ Rx``."""
    a, b, c = (float(x) for x in angles)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).to(torch.float32)


def augment_batch(batch: dict[str, Any], cfg: AugmentConfig, gen: torch.Generator) -> dict[str, Any]:
    """Randomly flip, rotate + scale, and jitter intensities of a batch.

    Args:
        batch: ``image`` ``(B, C, X, Y, Z)`` and ``tumour`` ``(B, 1, X, Y, Z)`` (any device), other keys kept.
        cfg: augmentation settings.
        gen: seeded CPU generator.

    Returns:
        a new batch dict with augmented ``image`` and ``tumour`` (binary, float). Rotation and scaling use
        ``affine_grid``/``grid_sample`` (trilinear for the image, trilinear + 0.5 threshold for the mask, zero
        padding) in normalised coordinates; intensity jitter ``x * s + b`` (per channel, ``b`` only where the
        image is non-zero, so the background stays 0).
    """
    if not cfg.enabled:
        return batch
    image, tumour = batch["image"], batch["tumour"]
    b, c = image.shape[:2]
    r_flip = torch.rand(b, 3, generator=gen)
    r_aff = torch.rand(b, generator=gen)
    angles = (torch.rand(b, 3, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
    scales = 1 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.scale
    i_scale = 1 + (torch.rand(b, c, generator=gen) * 2 - 1) * cfg.intensity_scale
    i_shift = (torch.rand(b, c, generator=gen) * 2 - 1) * cfg.intensity_shift

    imgs, tums = [], []
    for i in range(b):
        axes = [a + 1 for a in range(3) if cfg.flip and r_flip[i, a] < 0.5]
        img, tum = image[i], tumour[i]
        if axes:
            img, tum = torch.flip(img, axes), torch.flip(tum, axes)
        imgs.append(img)
        tums.append(tum)
    image, tumour = torch.stack(imgs), torch.stack(tums)

    sel = [i for i in range(b) if r_aff[i] < cfg.p_affine and (cfg.rotate_deg > 0 or cfg.scale > 0)]
    if sel:
        # affine_grid maps output to input coordinates: zooming in by s samples at coordinates / s.
        theta = torch.stack([torch.cat([_rotation(angles[i]) / scales[i], torch.zeros(3, 1)], dim=1) for i in sel]).to(
            image.device
        )
        idx = torch.tensor(sel, device=image.device)
        grid = F.affine_grid(theta, [len(sel), c, *image.shape[2:]], align_corners=False)
        warped = F.grid_sample(image[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped_t = F.grid_sample(tumour[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        image = image.clone()
        tumour = tumour.clone()
        image[idx] = warped
        tumour[idx] = (warped_t > 0.5).to(tumour.dtype)

    s = i_scale.to(image.device)[:, :, None, None, None]
    sh = i_shift.to(image.device)[:, :, None, None, None]
    image = image * s + sh * (image != 0)
    return {**batch, "image": image, "tumour": tumour}
