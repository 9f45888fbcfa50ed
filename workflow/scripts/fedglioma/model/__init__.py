"""Network and losses: a multi-task 3D U-Net (whole tumour + IDH, 1p/19q, MGMT, grade)."""

from fedglioma.model.config import ModelConfig
from fedglioma.model.loss import LOSS_TERMS, MultiTaskLoss, label_masks, soft_dice_loss
from fedglioma.model.net import HEAD_SIZES, MultiTaskUNet, build_model

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
