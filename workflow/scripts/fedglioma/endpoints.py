"""The definition of each classification endpoint: which subjects count for which task.

One definition, used by every arm and every stage: the training loss (:func:`fedglioma.model.loss.label_masks`),
site validation and its threshold counts (:func:`fedglioma.train.local.evaluate_dataset`), the external metrics
(:func:`fedglioma.evaluate.site.marker_targets`) and the paired comparison of models
(:mod:`fedglioma.evaluate.compare`).

The only endpoint with a choice is 1p/19q codeletion. WHO CNS 2021 defines oligodendroglioma as IDH-mutant
*and* 1p/19q-codeleted, so codeletion is only meaningful among IDH-mutant tumours; clinical tables nonetheless
record ``intact`` for many IDH-wildtype tumours, and counting those makes easy negatives that inflate the AUC.

- ``idh_mutant`` (default): 1p/19q counts only for subjects whose IDH label is mutant (1). A subject with a
  codeletion label but IDH wild-type or unknown is left out of that endpoint everywhere.
- ``all``: every subject with a 1p/19q label counts.

The external evaluation reports the other population's AUC as a secondary number with its n, so a reader sees
both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from fedglioma.errors import ConfigError

#: Populations the 1p/19q endpoint can be defined on.
CODELETION_POPULATIONS: tuple[str, ...] = ("idh_mutant", "all")
#: Words for each population (report and JSON).
POPULATION_LABEL: dict[str, str] = {"idh_mutant": "within IDH-mutant", "all": "all subjects with a label"}

Population = Literal["idh_mutant", "all"]
Mask = TypeVar("Mask")


@dataclass(frozen=True)
class Endpoints:
    """Config section ``endpoints``.

    Attributes:
        codeletion: the population of the 1p/19q endpoint, ``idh_mutant`` or ``all``.
    """

    codeletion: Population = "idh_mutant"

    def __post_init__(self) -> None:
        if self.codeletion not in CODELETION_POPULATIONS:
            raise ConfigError(
                f"endpoints.codeletion must be one of {list(CODELETION_POPULATIONS)}, got {self.codeletion!r}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Endpoints | None) -> Endpoints:
        """From the config section (``None``: the defaults); unknown keys raise ConfigError."""
        if isinstance(d, Endpoints):
            return d
        d = dict(d or {})
        unknown = sorted(set(d) - {"codeletion"})
        if unknown:
            raise ConfigError(f"unknown key(s) in endpoints: {unknown}; known: ['codeletion']")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def other(self) -> Endpoints:
        """The same endpoints with the other 1p/19q population (the report's secondary AUC)."""
        return Endpoints(codeletion="all" if self.codeletion == "idh_mutant" else "idh_mutant")


def restrict(task: str, has_label: Mask, idh: Any, endpoints: Endpoints) -> Mask:
    """Which subjects count for ``task``: ``has_label`` narrowed to the endpoint's population.

    Works on numpy arrays and torch tensors alike (only ``==`` and ``&`` are used).

    Args:
        task: ``idh``, ``codeletion``, ``mgmt`` or ``grade``.
        has_label: boolean mask of the subjects with a label for ``task``.
        idh: the subjects' IDH labels (1 mutant, 0 wild-type, NaN unknown), same length.
        endpoints: the configured endpoint definitions.
    """
    if task == "codeletion" and endpoints.codeletion == "idh_mutant":
        return has_label & (idh == 1)  # type: ignore[operator,no-any-return]
    return has_label


def load_endpoints(path: str | Path | None) -> Endpoints:
    """The ``endpoints:`` section of a config file (``None``: the defaults), as the subcommands read it."""
    from fedglioma.federated.config import read_config, section

    return Endpoints.from_dict(section(read_config(path), "endpoints"))
