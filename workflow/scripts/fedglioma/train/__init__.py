"""Site-side training: data, augmentation, local training loop, validation, prediction."""

from fedglioma.train.config import AugmentConfig, TrainConfig, load_configs
from fedglioma.train.data import SiteDataset, collate, read_labels, split_subjects, subject_of
from fedglioma.train.local import evaluate_dataset, init_global, load_model, local_train, predict, validate
from fedglioma.train.metrics import THRESHOLD_GRID
from fedglioma.train.seeding import derive_seed, deterministic

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
    "load_configs",
    "load_model",
    "local_train",
    "predict",
    "read_labels",
    "split_subjects",
    "subject_of",
    "validate",
]
