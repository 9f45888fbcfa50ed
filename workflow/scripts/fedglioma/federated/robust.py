"""Update norms and the update-norm bound (``federated.update_norm_bound``).

An update's norm is the L2 norm of its change to the previous global model over all shared parameters. The bound
is relative: ``k`` times the median norm of the round's accepted updates, so it needs no tuning to the model's
size or learning rate, and one attacker among three or more sites cannot move it far. An update above it is
clipped (its change scaled down to the bound, :class:`ScaledUpdate`) or refused. References: norm bounding
against backdoors (Sun et al. 2019, "Can you really backdoor federated learning?"); median-based scale (as in
FLAME's adaptive clipping, Nguyen et al. 2022).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedglioma.federated.exchange import Update


def update_norm(update: Update, global_prev: Mapping[str, torch.Tensor]) -> float:
    """``||w_site - w_global||_2`` over the shared parameters, in float64; reads every tensor once (and so checks
    that each is finite: :class:`~fedglioma.errors.UpdateRejected` otherwise)."""
    total = 0.0
    for k, prev in global_prev.items():
        d = update.get(k).to(torch.float64) - prev.to(torch.float64)
        total += float(torch.dot(d.flatten(), d.flatten()))
    return math.sqrt(total)


def norm_bound(norms: Mapping[str, float], k: float) -> float:
    """The bound of a round: ``k`` times the median of the accepted updates' norms (mean of the middle two for an
    even count)."""
    return k * statistics.median(norms.values())


@dataclass
class ScaledUpdate:
    """An update whose change to the previous global model is scaled by ``scale`` (the clipped update)."""

    inner: Update
    global_prev: Mapping[str, torch.Tensor]
    scale: float

    @property
    def site(self) -> str:
        return self.inner.site

    @property
    def round(self) -> int:
        return self.inner.round

    @property
    def n_train(self) -> int:
        return self.inner.n_train

    def get(self, name: str) -> torch.Tensor:
        prev = self.global_prev[name]
        new = self.inner.get(name).to(torch.float64)
        base = prev.to(torch.float64)
        return (base + (new - base) * self.scale).to(prev.dtype)

    def load(self) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in self.global_prev}
