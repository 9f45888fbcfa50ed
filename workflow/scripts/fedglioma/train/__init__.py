"""Site-side training: data, augmentation, local training loop, validation, prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedglioma.lazy import attach
from fedglioma.settings import AugmentConfig, TrainConfig  # the config section train: (defined in fedglioma.settings)

if TYPE_CHECKING:  # the names for type checkers and IDEs
    from fedglioma.train.data import SiteDataset, collate, read_labels, split_subjects, subject_of
    from fedglioma.train.local import evaluate_dataset, init_global, load_model, local_train, predict, validate
    from fedglioma.train.metrics import THRESHOLD_GRID
    from fedglioma.train.seeding import derive_seed, deterministic

#: public name -> submodule, imported on first use (PEP 562): importing the package needs no torch
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("SiteDataset", "collate", "read_labels", "split_subjects", "subject_of"), "data"),
    **dict.fromkeys(("evaluate_dataset", "init_global", "load_model", "local_train", "predict", "validate"), "local"),
    "THRESHOLD_GRID": "metrics",
    **dict.fromkeys(("derive_seed", "deterministic"), "seeding"),
}

__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "THRESHOLD_GRID",
    "AugmentConfig",
    "SiteDataset",
    "TrainConfig",
    "collate",
    "derive_seed",
    "deterministic",
    "evaluate_dataset",
    "init_global",
    "load_model",
    "local_train",
    "predict",
    "read_labels",
    "split_subjects",
    "subject_of",
    "validate",
]
