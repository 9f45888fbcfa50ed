"""Learning rate per federated round (``train.lr_schedule``): a pure function of the config and the round.

The rate is one number per round: every local epoch of a round, at every site, uses it, so a site's update never
depends on how far another site got. Round ``r`` is the federated round that :func:`fedglioma.train.local
.local_train` trains (``1..federated.rounds``; round 0 is the seeded initialisation and trains nothing).

``constant``: ``train.lr`` in every round, returned unchanged, so a run without a schedule trains bit-identically
to one before schedules existed.

``cosine`` with ``W = warmup_rounds``, ``R = rounds``, ``lr = train.lr``, ``lo = lr * min_lr_ratio``:

- warm-up, ``1 <= r <= W``: ``lr * r / (W + 1)`` (a linear ramp that reaches ``lr`` at round ``W + 1``);
- then, ``t = r - W - 1`` in ``0 .. R - W - 1``: ``lo + (lr - lo) * (1 + cos(pi * t / (R - W))) / 2``; the first
  round after the warm-up trains at ``lr`` and the last one just above ``lo`` (never at ``lo`` itself, so with
  ``min_lr_ratio: 0`` the last round still moves the model).

>>> from fedglioma.settings import TrainConfig
>>> cfg = TrainConfig(lr=1e-3, lr_schedule={"name": "cosine", "warmup_rounds": 1})
>>> [round(lr_for_round(cfg, r, 5) * 1e4, 2) for r in range(1, 6)]
[5.0, 10.0, 8.54, 5.0, 1.46]
"""

from __future__ import annotations

import math

from fedglioma.errors import ConfigError
from fedglioma.settings import TrainConfig

__all__ = ["lr_for_round", "lr_table"]


def lr_for_round(cfg: TrainConfig, round: int, rounds: int) -> float:
    """The learning rate of federated round ``round`` (1-based) out of ``rounds``.

    Args:
        cfg: the ``train:`` section (``lr`` and ``lr_schedule`` are read).
        round: the round being trained, ``1 <= round <= rounds`` (``local_train``'s ``round``).
        rounds: the federation's number of rounds (``federated.rounds``).

    Returns:
        the AdamW learning rate for all local epochs of that round (``cfg.lr`` itself for ``constant``).

    Raises:
        ConfigError: ``rounds < 1``, ``round`` outside ``1..rounds``, or a cosine warm-up that leaves no round
            for the cosine (``warmup_rounds >= rounds``).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"federated.rounds must be a positive integer, got {rounds!r}")
    if not isinstance(round, int) or not 1 <= round <= rounds:
        raise ConfigError(f"learning-rate schedule: round {round!r} is outside 1..{rounds} (round 0 trains nothing)")
    sched = cfg.lr_schedule
    if sched.name == "constant":
        return cfg.lr
    warm = sched.warmup_rounds
    if warm >= rounds:
        raise ConfigError(
            f"train.lr_schedule.warmup_rounds ({warm}) must be below federated.rounds ({rounds}): "
            "lower the warm-up or raise the rounds"
        )
    lr = float(cfg.lr)
    if round <= warm:
        return lr * round / (warm + 1)
    lo = lr * float(sched.min_lr_ratio)
    t = round - warm - 1
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * t / (rounds - warm)))


def lr_table(cfg: TrainConfig, rounds: int) -> list[float]:
    """``lr_for_round`` for rounds ``1..rounds`` (for logs, docs and plots)."""
    return [lr_for_round(cfg, r, rounds) for r in range(1, rounds + 1)]
