"""Federated learning: exchange format, update checks, server strategies, site-local parameters, model selection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedglioma.lazy import attach
from fedglioma.settings import STRATEGY_NAMES, FederatedConfig  # the config section federated: (in fedglioma.settings)

if TYPE_CHECKING:  # the names for type checkers and IDEs
    from fedglioma.federated.aggregate import aggregate_files
    from fedglioma.federated.exchange import (
        FileUpdate,
        MemoryUpdate,
        Update,
        load_params,
        load_update,
        open_update,
        read_sidecar,
        save_params,
        sha256_file,
        sidecar_path,
        update_status,
    )
    from fedglioma.federated.params import is_site_local, shared_names, split_params
    from fedglioma.federated.robust import ScaledUpdate, direction_cosines, update_norm
    from fedglioma.federated.select import select_model, youden
    from fedglioma.federated.strategies import (
        FedAdam,
        FedAvg,
        FedProx,
        FedYogi,
        Median,
        MultiKrum,
        Strategy,
        TrimmedMean,
        krum_byzantine,
        make_strategy,
        trim_count,
    )

#: public name -> submodule; imported on first use (PEP 562), so that building the ``fedglioma`` command line
#: does not import torch
_EXPORTS: dict[str, str] = {
    "aggregate_files": "aggregate",
    **dict.fromkeys(("FileUpdate", "MemoryUpdate", "Update", "load_params", "load_update", "open_update",
                     "read_sidecar", "save_params", "sha256_file", "sidecar_path", "update_status"),
                    "exchange"),
    **dict.fromkeys(("ScaledUpdate", "direction_cosines", "update_norm"), "robust"),
    **dict.fromkeys(("is_site_local", "shared_names", "split_params"), "params"),
    **dict.fromkeys(("select_model", "youden"), "select"),
    **dict.fromkeys(("FedAdam", "FedAvg", "FedProx", "FedYogi", "Median", "MultiKrum", "Strategy", "TrimmedMean",
                     "krum_byzantine", "make_strategy", "trim_count"), "strategies"),
}


__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "STRATEGY_NAMES",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "FederatedConfig",
    "FileUpdate",
    "Median",
    "MemoryUpdate",
    "MultiKrum",
    "ScaledUpdate",
    "Strategy",
    "TrimmedMean",
    "Update",
    "aggregate_files",
    "direction_cosines",
    "is_site_local",
    "krum_byzantine",
    "load_params",
    "load_update",
    "make_strategy",
    "open_update",
    "read_sidecar",
    "save_params",
    "select_model",
    "sha256_file",
    "shared_names",
    "sidecar_path",
    "split_params",
    "trim_count",
    "update_norm",
    "update_status",
    "youden",
]
