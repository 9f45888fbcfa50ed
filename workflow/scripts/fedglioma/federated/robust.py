"""Update norms and the update-norm bound (``federated.update_norm_bound``); update directions and the direction
check (``federated.update_min_cosine``).

An update's norm is the L2 norm of its change to the previous global model over all shared parameters. The bound
is relative: ``k`` times the median norm of the round's accepted updates, so it needs no tuning to the model's
size or learning rate, and one attacker among three or more sites cannot move it far. An update above it is
clipped (its change scaled down to the bound, :class:`ScaledUpdate`) or refused. References: norm bounding
against backdoors (Sun et al. 2019, "Can you really backdoor federated learning?"); median-based scale (as in
FLAME's adaptive clipping, Nguyen et al. 2022).

An update's direction is judged against the other sites': its cosine similarity with the coordinate-wise median of
the other accepted updates' changes (leave-one-out, so the update cannot pull its own reference; the median, so one
attacker cannot steer another site's reference far). An update below ``update_min_cosine`` (0: pointing away from
what the others agree on, as a sign-flipped update does) is refused. Honest updates of small, different sites are
nearly orthogonal (cosine 0.02-0.36 with that reference on the demo cohort), so only a threshold at or just below 0
is safe; it needs three or more updates. References: the trust score ``ReLU(cos)`` against a reference direction
of FLTrust (Cao et al. 2021, which takes the reference from server-side data; here the other sites give it), and
cosine-based filtering in FLAME.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedglioma.federated.exchange import Update
from fedglioma.federated.strategies import Median


def update_norm(update: Update, global_prev: Mapping[str, torch.Tensor]) -> float:
    """``||w_site - w_global||_2`` over the shared parameters, in float64; reads every tensor once (and so checks
    that each is finite: :class:`~fedglioma.errors.UpdateRejected` otherwise)."""
    total = 0.0
    for k, prev in global_prev.items():
        d = update.get(k).to(torch.float64) - prev.to(torch.float64)
        total += float(torch.dot(d.flatten(), d.flatten()))
    return math.sqrt(total)


def direction_cosines(updates: Mapping[str, Update], global_prev: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per site, the cosine similarity of its change ``w_site - w_global`` with the coordinate-wise median of the
    other sites' changes (mean of the middle two for an even count), over all shared parameters, in float64.
    Streams over parameter names (O(sites x largest tensor)). Needs at least three updates; a zero change or a
    zero reference has cosine 0."""
    sites = list(updates)
    if len(sites) < 3:
        raise ValueError(f"the direction check needs at least 3 updates, got {len(sites)}")
    median = Median()
    dot = dict.fromkeys(sites, 0.0)
    own = dict.fromkeys(sites, 0.0)
    ref2 = dict.fromkeys(sites, 0.0)
    for k, prev in global_prev.items():
        base = prev.to(torch.float64).flatten()
        d = torch.stack([updates[s].get(k).to(torch.float64).flatten() - base for s in sites])
        for i, s in enumerate(sites):
            ref = median.reduce(torch.cat([d[:i], d[i + 1:]]).sort(dim=0).values)
            dot[s] += float(torch.dot(d[i], ref))
            own[s] += float(torch.dot(d[i], d[i]))
            ref2[s] += float(torch.dot(ref, ref))
        del d
    return {s: dot[s] / math.sqrt(own[s] * ref2[s]) if own[s] > 0 and ref2[s] > 0 else 0.0 for s in sites}


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
