"""Federated configuration (the ``federated:`` section of ``config.yaml``) and config-file reading."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedglioma.errors import ConfigError

#: Strategy names accepted in ``federated.strategy``.
STRATEGY_NAMES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedyogi", "median", "trimmed_mean")


@dataclass(frozen=True)
class FederatedConfig:
    """Federated learning settings.

    Attributes:
        rounds: number of federated rounds (round 0 is the seeded initialisation).
        strategy: server aggregation strategy, one of ``STRATEGY_NAMES``.
        mu: FedProx proximal weight (client side; only used when ``strategy == "fedprox"``).
        server_lr: FedOpt server learning rate (eta).
        beta1, beta2: FedOpt moment decay rates.
        tau: FedOpt adaptivity (added to ``sqrt(v)``).
        trim_fraction: trimmed mean: fraction of sites dropped at each end per coordinate (``floor(beta * n)``).
        site_local_patterns: ``fnmatch`` patterns of parameter names kept at each site (never sent), e.g.
            ``["*.norm*"]`` for FedBN-style personalised normalisation.
    """

    rounds: int = 3
    strategy: str = "fedavg"
    mu: float = 0.01
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    trim_fraction: float = 0.1
    site_local_patterns: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"federated.strategy must be one of {list(STRATEGY_NAMES)}, got {self.strategy!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"federated.rounds must be a positive integer, got {self.rounds!r}")
        if not float(self.mu) >= 0:
            raise ConfigError(f"federated.mu must be >= 0, got {self.mu!r}")
        if not float(self.server_lr) > 0:
            raise ConfigError(f"federated.server_lr must be > 0, got {self.server_lr!r}")
        for k in ("beta1", "beta2"):
            if not 0 <= float(getattr(self, k)) < 1:
                raise ConfigError(f"federated.{k} must be in [0, 1), got {getattr(self, k)!r}")
        if not float(self.tau) > 0:
            raise ConfigError(f"federated.tau must be > 0, got {self.tau!r}")
        if not 0 <= float(self.trim_fraction) < 0.5:
            raise ConfigError(f"federated.trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        pats = self.site_local_patterns
        if isinstance(pats, str) or not all(isinstance(p, str) and p for p in pats):
            raise ConfigError(f"federated.site_local_patterns must be a list of non-empty strings, got {pats!r}")
        object.__setattr__(self, "site_local_patterns", tuple(pats))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FederatedConfig:
        """Build from the ``federated:`` section; missing keys take the defaults, unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) in federated: {unknown}; known: {sorted(known)}")
        if d.get("site_local_patterns") is None:
            d.pop("site_local_patterns", None)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d["site_local_patterns"] = list(self.site_local_patterns)
        return d


def read_config(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into a dict; ``None`` gives ``{}``."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data


def section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``name:`` section of a config dict (``{}`` when absent)."""
    s = config.get(name) or {}
    if not isinstance(s, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping, got {type(s).__name__}")
    return dict(s)
