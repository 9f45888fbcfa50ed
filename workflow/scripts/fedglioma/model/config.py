"""Model configuration (the ``model:`` section of ``config.yaml``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedglioma.constants import MODALITIES, TASKS
from fedglioma.errors import ConfigError

#: Loss terms and their default weights (here, not in :mod:`fedglioma.model.loss`, so configs load without torch).
LOSS_TERMS: tuple[str, ...] = ("seg", *TASKS)
DEFAULT_TASK_WEIGHTS: dict[str, float] = dict.fromkeys(LOSS_TERMS, 1.0)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the multi-task 3D U-Net.

    Attributes:
        in_channels: input channels (the four modalities of a training file).
        width: channels of the first encoder level; level ``i`` has ``width * 2**i``.
        depth: number of stride-2 downsamplings; the bottleneck is at ``1 / 2**depth`` of the input grid.
        dropout: dropout probability in the classification heads (0 disables).
    """

    in_channels: int = len(MODALITIES)
    width: int = 8
    depth: int = 3
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ConfigError(f"model.in_channels must be a positive integer, got {self.in_channels!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ConfigError(f"model.width must be a positive integer, got {self.width!r}")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 6:
            raise ConfigError(f"model.depth must be an integer in 1..6, got {self.depth!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ModelConfig:
        """Build from the ``model:`` section; missing keys take the defaults, unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) in model: {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def architecture(self) -> dict[str, int]:
        """The keys that change parameter names or shapes (dropout does not)."""
        return {"in_channels": self.in_channels, "width": self.width, "depth": self.depth}
