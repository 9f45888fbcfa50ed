"""Multi-task loss with missing-label masking.

Labels arrive as a ``(B, 4)`` float tensor in ``TASKS`` order (idh, codeletion, mgmt, grade class index 0/1/2),
NaN where missing. Each term is computed only over the subjects that have its label (rows are selected, never
multiplied by zero, so NaN targets cannot leak and unlabelled rows get exactly zero gradient). A term with no
labelled subject in the batch is left out altogether: its head gets no gradient (``grad`` stays ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedglioma.constants import TASKS
from fedglioma.endpoints import Endpoints, restrict
from fedglioma.settings import TaskWeights

IDH, CODELETION, MGMT, GRADE = range(4)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, *,
                   per_sample: bool = False) -> torch.Tensor:
    """Per-sample soft Dice loss, averaged over the batch (``per_sample``: one value per sample, ``(N,)``).

    Args:
        logits: ``(N, 1, X, Y, Z)`` segmentation logits.
        target: ``(N, 1, X, Y, Z)`` binary mask (float).

    Returns:
        scalar ``mean_n(1 - (2 sum(p g) + s) / (sum p + sum g + s))`` with ``p = sigmoid(logits)``.
    """
    p = torch.sigmoid(logits).flatten(1)
    g = target.flatten(1)
    inter = (p * g).sum(1)
    dice = (2 * inter + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return 1 - dice if per_sample else (1 - dice).mean()


def label_masks(labels: torch.Tensor, endpoints: Endpoints | None = None) -> dict[str, torch.Tensor]:
    """Which rows count for each task: ``(B, 4)`` -> ``{task: (B,) bool}``.

    A row counts when it has the label and is in the task's population (:func:`fedglioma.endpoints.restrict`;
    by default 1p/19q codeletion counts only for IDH-mutant subjects).
    """
    endpoints = endpoints or Endpoints()
    present = ~torch.isnan(labels)
    return {t: restrict(t, present[:, i], labels[:, IDH], endpoints) for i, t in enumerate(TASKS)}


class MultiTaskLoss(nn.Module):
    """Weighted sum of: soft Dice + BCE (segmentation, subjects with a mask), BCE per binary marker, CE for grade."""

    def __init__(self, weights: TaskWeights | None = None, endpoints: Endpoints | None = None) -> None:
        super().__init__()
        self.endpoints = endpoints or Endpoints()
        self.weights = (weights or TaskWeights()).model_dump()

    def forward(
        self,
        out: Mapping[str, torch.Tensor],
        tumour: torch.Tensor,
        has_seg: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            out: network outputs (``seg`` ``(B,1,X,Y,Z)``, binary tasks ``(B,)``, ``grade`` ``(B,3)``).
            tumour: ``(B, 1, X, Y, Z)`` float mask (any value where ``has_seg`` is False).
            has_seg: ``(B,)`` bool, the subject has a tumour mask.
            labels: ``(B, 4)`` float, NaN = missing.

        Returns:
            ``(total, terms)``: ``total`` is the weighted sum of the available terms (``None`` when the batch
            carries no label at all, so there is nothing to learn); ``terms`` maps each available term to its
            unweighted scalar value.
        """
        terms: dict[str, torch.Tensor] = {}
        if bool(has_seg.any()) and self.weights["seg"] > 0:
            logits, target = out["seg"][has_seg], tumour[has_seg]
            terms["seg"] = soft_dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
        masks = label_masks(labels, self.endpoints)
        for i, t in enumerate(TASKS):
            m = masks[t]
            if not bool(m.any()) or self.weights[t] == 0:
                continue
            if t == "grade":
                terms[t] = F.cross_entropy(out[t][m], labels[m, i].long())
            else:
                terms[t] = F.binary_cross_entropy_with_logits(out[t][m], labels[m, i])
        if not terms:
            return None, terms
        total = sum((self.weights[k] * v for k, v in terms.items()), start=torch.zeros((), device=labels.device))
        return total, terms

    def per_sample(
        self,
        out: Mapping[str, torch.Tensor],
        tumour: torch.Tensor,
        has_seg: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Each subject's own loss, for per-sample gradients (DP-SGD, :mod:`fedglioma.train.privacy`).

        Subject ``i`` gets ``l_i = sum_t w_t L_t(i)`` over the terms it has a label for (segmentation: its soft Dice
        + its voxel-mean BCE; markers: its BCE or CE), 0 without any. Unlike :meth:`forward`, whose terms are means
        over the labelled subjects of the batch (a normaliser that depends on the other subjects), ``l_i`` depends
        on subject ``i`` alone, so ``sum_i l_i`` has per-subject gradients ``grad l_i``; the caller divides by a
        fixed normaliser. Unlabelled rows are left out by row selection (no NaN reaches the graph).

        Returns:
            ``(losses, terms)``: ``losses`` ``(B,)``; ``terms`` the mean of each available term over its labelled
            subjects (for logging, detached).
        """
        b = labels.shape[0]
        losses = torch.zeros(b, device=labels.device)
        terms: dict[str, torch.Tensor] = {}

        def add(name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
            nonlocal losses
            losses = losses.index_put((rows,), self.weights[name] * values, accumulate=True)
            terms[name] = values.detach().mean()

        if bool(has_seg.any()) and self.weights["seg"] > 0:
            rows = torch.nonzero(has_seg).flatten()
            logits, target = out["seg"][rows], tumour[rows]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
            add("seg", rows, soft_dice_loss(logits, target, per_sample=True) + bce)
        masks = label_masks(labels, self.endpoints)
        for i, t in enumerate(TASKS):
            m = masks[t]
            if not bool(m.any()) or self.weights[t] == 0:
                continue
            rows = torch.nonzero(m).flatten()
            if t == "grade":
                values = F.cross_entropy(out[t][rows], labels[rows, i].long(), reduction="none")
            else:
                values = F.binary_cross_entropy_with_logits(out[t][rows], labels[rows, i], reduction="none")
            add(t, rows, values)
        return losses, terms
