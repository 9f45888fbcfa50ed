"""Server aggregation strategies behind one interface.

Every strategy maps ``(global_prev, updates, server_state) -> (new_global, new_state)`` over the *shared*
parameters only (site-local parameters never reach the server). Updates are :class:`~fedglioma.federated.exchange.Update`
handles that read their tensors lazily:

- ``fedavg`` / ``fedprox`` / ``fedadam`` / ``fedyogi`` stream over sites: one update in memory at a time plus
  running float64 sums, so memory is O(model size).
- ``median`` / ``trimmed_mean`` need all sites' values of a coordinate at once; they stream over parameter names,
  holding O(sites x largest tensor).
- ``multi_krum`` needs the sites' pairwise distances: it streams over parameter names (O(sites x largest tensor)),
  then averages the selected updates streaming over sites.

References: FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020; the proximal term is on the client side, the
server averages like FedAvg), FedAdam/FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2,
without bias correction), coordinate-wise median and trimmed mean (Yin et al. 2018), Krum and Multi-Krum (Blanchard et al. 2017, "Machine
learning with adversaries: Byzantine tolerant gradient descent"; El Mhamdi et al. 2018).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from fedglioma.errors import ConfigError, UpdateRejected
from fedglioma.federated.exchange import Update
from fedglioma.settings import FederatedConfig

Tensors = dict[str, torch.Tensor]


def _checked(updates: Iterable[Update]) -> list[Update]:
    """The round's updates as a list: at least one, one per site."""
    ups = list(updates)
    if not ups:
        raise ConfigError("no updates to aggregate")
    seen: set[str] = set()
    for u in ups:
        if u.site in seen:
            raise UpdateRejected(f"update from site {u.site}, round {u.round}: more than one update from this site")
        seen.add(u.site)
    return ups


def _mean(global_prev: Mapping[str, torch.Tensor], updates: Sequence[Update], *, weighted: bool) -> Tensors:
    """The mean of the (:func:`_checked`) updates in float64, each weighted by its ``n_train`` (``weighted``) or by
    1, loading one update at a time."""
    acc = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in global_prev.items()}
    total = 0
    for u in updates:
        weight = u.n_train if weighted else 1
        params = u.load()
        for k in acc:
            acc[k].add_(params[k].to(torch.float64), alpha=float(weight))
        total += weight
        del params
    if total == 0:
        raise ConfigError("no updates to aggregate")
    return {k: v / total for k, v in acc.items()}


class Strategy(ABC):
    """Server-side aggregation of one round."""

    name: ClassVar[str]

    @abstractmethod
    def aggregate(
        self,
        global_prev: Mapping[str, torch.Tensor],
        updates: Iterable[Update],
        server_state: Mapping[str, torch.Tensor],
    ) -> tuple[Tensors, Tensors]:
        """Aggregate one round.

        Args:
            global_prev: shared parameters of the previous global model (defines names, shapes, dtypes).
            updates: checked site updates of this round (at least one), each holding exactly those names.
            server_state: the strategy's state from the previous round (``{}`` in round 1 or when stateless).

        Returns:
            ``(new_global, new_state)``; ``new_global`` has the names, shapes and dtypes of ``global_prev``.
        """

    def round_record(self) -> dict[str, Any]:
        """What the last :meth:`aggregate` decided beyond the plain rule, for the round's sidecar (``{}`` if
        nothing): the trimmed mean's trim, Multi-Krum's selection."""
        return {}


class FedAvg(Strategy):
    """Sample-weighted mean of the site parameters: ``sum_k n_k w_k / sum_k n_k`` (float64 accumulation)."""

    name = "fedavg"

    def weighted_mean(
        self, global_prev: Mapping[str, torch.Tensor], updates: Iterable[Update]
    ) -> dict[str, torch.Tensor]:
        """Streaming weighted mean in float64 (one update loaded at a time)."""
        return _mean(global_prev, _checked(updates), weighted=True)

    def aggregate(
        self,
        global_prev: Mapping[str, torch.Tensor],
        updates: Iterable[Update],
        server_state: Mapping[str, torch.Tensor],
    ) -> tuple[Tensors, Tensors]:
        mean = self.weighted_mean(global_prev, updates)
        return {k: mean[k].to(global_prev[k].dtype) for k in global_prev}, {}


class FedProx(FedAvg):
    """FedProx: the proximal term ``mu/2 ||w - w_global||^2`` acts in local training; the server is FedAvg."""

    name = "fedprox"


class FedOpt(FedAvg):
    """Adaptive server optimiser on the pseudo-gradient ``delta = fedavg(updates) - global_prev``.

    ``m = b1 m + (1 - b1) delta``; ``v`` per subclass; ``w = w_prev + lr * m / (sqrt(v) + tau)``.
    State (saved as safetensors): ``m.{name}`` and ``v.{name}``, float32, zeros before round 1.
    """

    def __init__(self, server_lr: float, beta1: float, beta2: float, tau: float) -> None:
        self.lr, self.beta1, self.beta2, self.tau = float(server_lr), float(beta1), float(beta2), float(tau)

    @abstractmethod
    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        """New ``v`` from the old ``v`` and ``delta**2``."""

    def aggregate(
        self,
        global_prev: Mapping[str, torch.Tensor],
        updates: Iterable[Update],
        server_state: Mapping[str, torch.Tensor],
    ) -> tuple[Tensors, Tensors]:
        mean = self.weighted_mean(global_prev, updates)
        new: Tensors = {}
        state: Tensors = {}
        for k, prev in global_prev.items():
            x = prev.to(torch.float64)
            delta = mean[k] - x
            m = server_state.get(f"m.{k}")
            v = server_state.get(f"v.{k}")
            m = torch.zeros_like(x) if m is None else m.to(torch.float64)
            v = torch.zeros_like(x) if v is None else v.to(torch.float64)
            if m.shape != x.shape or v.shape != x.shape:
                raise ConfigError(f"server state for {k!r} has the wrong shape (state from another model?)")
            m = self.beta1 * m + (1 - self.beta1) * delta
            v = self.second_moment(v, delta * delta)
            new[k] = (x + self.lr * m / (v.sqrt() + self.tau)).to(prev.dtype)
            state[f"m.{k}"] = m.to(torch.float32)
            state[f"v.{k}"] = v.to(torch.float32)
        return new, state


class FedAdam(FedOpt):
    """FedAdam: ``v = b2 v + (1 - b2) delta^2``."""

    name = "fedadam"

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * d2


class FedYogi(FedOpt):
    """FedYogi: ``v = v - (1 - b2) delta^2 sign(v - delta^2)``."""

    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)


class _PerCoordinate(Strategy):
    """Robust aggregation per coordinate, unweighted (n_train is not trusted), streaming over parameter names."""

    @abstractmethod
    def reduce(self, sorted_values: torch.Tensor) -> torch.Tensor:
        """``(S, *shape)`` values sorted along dim 0 -> ``(*shape)``."""

    def aggregate(
        self,
        global_prev: Mapping[str, torch.Tensor],
        updates: Iterable[Update],
        server_state: Mapping[str, torch.Tensor],
    ) -> tuple[Tensors, Tensors]:
        ups = _checked(updates)
        new: Tensors = {}
        for k, prev in global_prev.items():
            stacked = torch.stack([u.get(k).to(torch.float64) for u in ups])
            new[k] = self.reduce(stacked.sort(dim=0).values).to(prev.dtype)
            del stacked
        return new, {}


class Median(_PerCoordinate):
    """Coordinate-wise median (mean of the two middle values for an even number of sites)."""

    name = "median"

    def reduce(self, sorted_values: torch.Tensor) -> torch.Tensor:
        n = sorted_values.shape[0]
        if n % 2:
            return sorted_values[n // 2]
        return (sorted_values[n // 2 - 1] + sorted_values[n // 2]) / 2


def trim_count(beta: float, n_sites: int) -> int:
    """Values a trimmed mean drops at each end of ``n_sites``: ``ceil(beta * n_sites)``, at most ``(n_sites - 1) // 2``.

    Rounded up, so that the configured fraction trims at the sizes federations have (0.1 of 5 sites is 1, where
    rounding down gave 0, a plain mean); capped so that at least one value remains.

    >>> [trim_count(0.1, n) for n in (1, 2, 3, 5, 10, 11, 20)]
    [0, 0, 1, 1, 1, 2, 2]
    >>> trim_count(0.0, 5)
    0
    """
    return min(math.ceil(round(beta * n_sites, 9)), (n_sites - 1) // 2)


class TrimmedMean(_PerCoordinate):
    """Coordinate-wise trimmed mean: drop the :func:`trim_count` smallest and largest values, average the rest."""

    name = "trimmed_mean"

    def __init__(self, beta: float) -> None:
        if not 0 <= beta < 0.5:
            raise ConfigError(f"trimmed mean fraction must be in [0, 0.5), got {beta}")
        self.beta = float(beta)
        self._trimmed: int | None = None

    def reduce(self, sorted_values: torch.Tensor) -> torch.Tensor:
        n = sorted_values.shape[0]
        k = trim_count(self.beta, n)
        self._trimmed = k
        return sorted_values[k : n - k].mean(dim=0)

    def round_record(self) -> dict[str, Any]:
        return {} if self._trimmed is None else {"trimmed_per_end": self._trimmed}


def krum_byzantine(f: int, n_sites: int) -> int:
    """The number of attackers Multi-Krum assumes in a round of ``n_sites`` updates: the configured ``f``, lowered
    to the largest ``f' <= f`` with ``n_sites >= 2 f' + 3`` (the condition of Blanchard et al.'s guarantee), at
    least 0. A round with fewer sites than the configuration planned for (some failed) still aggregates.

    >>> [krum_byzantine(1, n) for n in (1, 2, 3, 4, 5, 10)]
    [0, 0, 0, 0, 1, 1]
    >>> krum_byzantine(2, 7), krum_byzantine(2, 6)
    (2, 1)
    """
    return max(0, min(f, (n_sites - 3) // 2))


class MultiKrum(Strategy):
    """Multi-Krum: score each update by the sum of its squared distances to its ``n - f - 2`` nearest other
    updates, keep the ``n - f`` lowest scores, average the kept updates (unweighted: ``n_train`` is not trusted).

    ``f`` is :func:`krum_byzantine` of ``federated.krum_byzantine`` and the round's number of updates; with
    ``f = 0`` every update is kept (the plain unweighted mean). Distances are over the shared parameters, in
    float64; ties in the score keep the site that comes first in sites.tsv.
    """

    name = "multi_krum"

    def __init__(self, byzantine: int) -> None:
        if byzantine < 0:
            raise ConfigError(f"multi-Krum's assumed number of attackers must be >= 0, got {byzantine}")
        self.byzantine = int(byzantine)
        self._record: dict[str, Any] = {}

    def select(self, global_prev: Mapping[str, torch.Tensor], ups: list[Update]) -> list[int]:
        """Indices (in ``ups``) of the kept updates, in their order; records the scores."""
        n = len(ups)
        f = krum_byzantine(self.byzantine, n)
        d2 = torch.zeros((n, n), dtype=torch.float64)
        if f > 0:
            for k in global_prev:
                x = [u.get(k).to(torch.float64).flatten() for u in ups]
                for i in range(n):
                    for j in range(i + 1, n):
                        diff = x[i] - x[j]
                        d2[i, j] += torch.dot(diff, diff)
                del x
            d2 = d2 + d2.T
        neighbours = n - f - 2
        scores = [float(d2[i][torch.arange(n) != i].sort().values[:neighbours].sum()) if f > 0 else 0.0
                  for i in range(n)]
        keep = sorted(sorted(range(n), key=lambda i: (scores[i], i))[: n - f])
        self._record = {"krum": {"byzantine": f, "neighbours": neighbours if f > 0 else None,
                                 "scores": {u.site: scores[i] for i, u in enumerate(ups)},
                                 "kept": [ups[i].site for i in keep],
                                 "not_kept": [u.site for i, u in enumerate(ups) if i not in keep]}}
        return keep

    def aggregate(
        self,
        global_prev: Mapping[str, torch.Tensor],
        updates: Iterable[Update],
        server_state: Mapping[str, torch.Tensor],
    ) -> tuple[Tensors, Tensors]:
        ups = _checked(updates)
        mean = _mean(global_prev, [ups[i] for i in self.select(global_prev, ups)], weighted=False)
        return {k: mean[k].to(global_prev[k].dtype) for k in global_prev}, {}

    def round_record(self) -> dict[str, Any]:
        return self._record


def make_strategy(cfg: FederatedConfig) -> Strategy:
    """The strategy named by ``cfg.strategy`` with its parameters."""
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg()
    if name == "fedprox":
        return FedProx()
    if name == "fedadam":
        return FedAdam(cfg.server_lr, cfg.beta1, cfg.beta2, cfg.tau)
    if name == "fedyogi":
        return FedYogi(cfg.server_lr, cfg.beta1, cfg.beta2, cfg.tau)
    if name == "median":
        return Median()
    if name == "trimmed_mean":
        return TrimmedMean(cfg.trim_fraction)
    if name == "multi_krum":
        return MultiKrum(cfg.krum_byzantine)
    raise ConfigError(f"unknown strategy {name!r}")
