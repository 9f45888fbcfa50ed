"""Training configuration (the ``train:`` section of ``config.yaml``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedglioma.errors import ConfigError
from fedglioma.federated.config import FederatedConfig, read_config, section
from fedglioma.model.config import DEFAULT_TASK_WEIGHTS, LOSS_TERMS, ModelConfig


def _from_dict(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {unknown}; known: {sorted(known)}")
    return dict(d)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (``train.augment``; ``true``/``false`` or a mapping of these keys).

    Attributes:
        enabled: master switch.
        flip: random flip of each axis with probability 0.5.
        p_affine: probability of a random rotation + scaling per sample.
        rotate_deg: rotation angles uniform in ``[-rotate_deg, rotate_deg]`` about each axis.
        scale: isotropic scaling factor uniform in ``[1 - scale, 1 + scale]``.
        intensity_scale: per-channel multiplicative jitter uniform in ``[1 - s, 1 + s]``.
        intensity_shift: per-channel additive jitter uniform in ``[-s, s]`` (images are normalised).
    """

    enabled: bool = True
    flip: bool = True
    p_affine: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.p_affine <= 1:
            raise ConfigError(f"train.augment.p_affine must be in [0, 1], got {self.p_affine!r}")
        for k in ("rotate_deg", "scale", "intensity_scale", "intensity_shift"):
            if not float(getattr(self, k)) >= 0:
                raise ConfigError(f"train.augment.{k} must be >= 0, got {getattr(self, k)!r}")
        if self.scale >= 1 or self.intensity_scale >= 1:
            raise ConfigError("train.augment.scale and intensity_scale must be < 1")

    @classmethod
    def from_value(cls, v: bool | Mapping[str, Any] | None) -> AugmentConfig:
        """From ``true``/``false``/``null`` or a mapping."""
        if v is None or v is True:
            return cls()
        if v is False:
            return cls(enabled=False)
        if isinstance(v, Mapping):
            return cls(**_from_dict(cls, v, "train.augment"))
        raise ConfigError(f"train.augment must be true, false or a mapping, got {v!r}")


#: Learning-rate schedules accepted in ``train.lr_schedule`` (``fedglioma.train.schedule.lr_for_round``).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class LrScheduleConfig:
    """Learning rate per federated round (``train.lr_schedule``; a name or a mapping of these keys).

    The rate is fixed within a round (all of its local epochs) and set per round by
    :func:`fedglioma.train.schedule.lr_for_round`, so every site uses the same rate in the same round.

    Attributes:
        name: ``constant`` (``train.lr`` in every round: the behaviour without a schedule; the other keys are
            ignored) or ``cosine`` (after the warm-up, half a cosine from ``train.lr`` down towards
            ``train.lr * min_lr_ratio`` over the remaining rounds of ``federated.rounds``).
        warmup_rounds: cosine only: rounds ``1..warmup_rounds`` ramp linearly up to ``train.lr``
            (``lr * r / (warmup_rounds + 1)``); 0 = no warm-up. Must be below ``federated.rounds``.
        min_lr_ratio: cosine only: the floor the cosine decays towards, as a fraction of ``train.lr``.
    """

    name: str = "constant"
    warmup_rounds: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise ConfigError(f"train.lr_schedule.name must be one of {list(LR_SCHEDULES)}, got {self.name!r}")
        if not isinstance(self.warmup_rounds, int) or isinstance(self.warmup_rounds, bool) or self.warmup_rounds < 0:
            raise ConfigError(f"train.lr_schedule.warmup_rounds must be an integer >= 0, got {self.warmup_rounds!r}")
        if not 0 <= float(self.min_lr_ratio) <= 1:
            raise ConfigError(f"train.lr_schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")

    @classmethod
    def from_value(cls, v: str | Mapping[str, Any] | None) -> LrScheduleConfig:
        """From a name (``constant``, ``cosine``), ``null`` (constant) or a mapping."""
        if v is None:
            return cls()
        if isinstance(v, str):
            return cls(name=v)
        if isinstance(v, Mapping):
            return cls(**_from_dict(cls, v, "train.lr_schedule"))
        raise ConfigError(f"train.lr_schedule must be a name or a mapping, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings.

    Attributes:
        epochs_per_round: local epochs per federated round (E).
        batch_size: subjects per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        val_fraction: fraction of each site's subjects held out for site-local validation (hash split by subject).
        augment: augmentation settings.
        seed: seed of initialisation, split, shuffling, augmentation and dropout.
        task_weights: loss weights of ``seg``, ``idh``, ``codeletion``, ``mgmt``, ``grade``.
        grad_clip: max global gradient norm (0 disables).
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        lr_schedule: learning rate per federated round (default constant ``lr``).
    """

    epochs_per_round: int = 1
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 42
    task_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    grad_clip: float = 12.0
    amp: bool = False
    lr_schedule: LrScheduleConfig = field(default_factory=LrScheduleConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.epochs_per_round, int) or self.epochs_per_round < 1:
            raise ConfigError(f"train.epochs_per_round must be a positive integer, got {self.epochs_per_round!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be a positive integer, got {self.batch_size!r}")
        if not float(self.lr) > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr!r}")
        if not float(self.weight_decay) >= 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= float(self.val_fraction) < 1:
            raise ConfigError(f"train.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"train.seed must be an integer, got {self.seed!r}")
        if not float(self.grad_clip) >= 0:
            raise ConfigError(f"train.grad_clip must be >= 0, got {self.grad_clip!r}")
        unknown = sorted(set(self.task_weights) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError(f"unknown train.task_weights {unknown}; known: {list(LOSS_TERMS)}")
        object.__setattr__(self, "task_weights", {**DEFAULT_TASK_WEIGHTS, **dict(self.task_weights)})
        if not isinstance(self.lr_schedule, LrScheduleConfig):
            object.__setattr__(self, "lr_schedule", LrScheduleConfig.from_value(self.lr_schedule))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        """Build from the ``train:`` section; missing keys take the defaults, unknown keys are an error."""
        d = _from_dict(cls, dict(d or {}), "train")
        if "augment" in d:
            d["augment"] = AugmentConfig.from_value(d["augment"])
        if "lr_schedule" in d:
            d["lr_schedule"] = LrScheduleConfig.from_value(d["lr_schedule"])
        if d.get("task_weights") is None:
            d.pop("task_weights", None)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d["task_weights"] = dict(self.task_weights)
        return d


def load_configs(path: str | Path | None) -> tuple[ModelConfig, TrainConfig, FederatedConfig]:
    """Read the ``model:``, ``train:`` and ``federated:`` sections of a config file (``None``: defaults)."""
    cfg = read_config(path)
    return (
        ModelConfig.from_dict(section(cfg, "model")),
        TrainConfig.from_dict(section(cfg, "train")),
        FederatedConfig.from_dict(section(cfg, "federated")),
    )


def build_configs(model_cfg: Mapping[str, Any] | None, train_cfg: Mapping[str, Any] | None = None,
                  federated_cfg: Mapping[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig, FederatedConfig]:
    """The ``model``, ``train`` and ``federated`` config sections (dicts, as a rule's params carry them) as
    config objects; a missing section takes the defaults."""
    return (ModelConfig.from_dict(model_cfg or {}), TrainConfig.from_dict(train_cfg or {}),
            FederatedConfig.from_dict(federated_cfg or {}))
