"""Network and losses: a multi-task 3D U-Net (whole tumour + IDH, 1p/19q, MGMT, grade)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedglioma.lazy import attach
from fedglioma.settings import LOSS_TERMS, ModelConfig  # the config section model: (defined in fedglioma.settings)

if TYPE_CHECKING:  # the names for type checkers and IDEs
    from fedglioma.model.loss import MultiTaskLoss, label_masks, soft_dice_loss
    from fedglioma.model.net import HEAD_SIZES, MultiTaskUNet, build_model

#: public name -> submodule, imported on first use (PEP 562): importing the package needs no torch
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("MultiTaskLoss", "label_masks", "soft_dice_loss"), "loss"),
    **dict.fromkeys(("HEAD_SIZES", "MultiTaskUNet", "build_model"), "net"),
}


__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "HEAD_SIZES",
    "LOSS_TERMS",
    "ModelConfig",
    "MultiTaskLoss",
    "MultiTaskUNet",
    "build_model",
    "label_masks",
    "soft_dice_loss",
]
