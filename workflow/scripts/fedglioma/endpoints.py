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
both. The config section ``endpoints:`` is :class:`fedglioma.settings.Endpoints`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fedglioma.settings import Endpoints

#: Words for each population (report and JSON).
POPULATION_LABEL: dict[str, str] = {"idh_mutant": "within IDH-mutant", "all": "all subjects with a label"}

Mask = TypeVar("Mask")


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
