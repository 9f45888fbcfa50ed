"""Workflow step of the server: aggregation of one round (rule ``aggregate``, ``fedglioma federated aggregate``).

Model selection is :func:`fedglioma.federated.select.select_model`. torch is imported only when a step runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedglioma.errors import ConfigError
from fedglioma.settings import FederatedConfig, section

log = logging.getLogger(__name__)


def aggregate_round(updates: Sequence[str], update_metas: Sequence[str], previous: str, model: str, meta: str,
                    server_state: str, server_state_meta: str, *, round: int, federated_cfg: Mapping[str, Any],
                    sites: Sequence[str] = (), previous_state: str | None = None) -> dict[str, Any]:
    """Rule ``aggregate`` / ``fedglioma federated aggregate``: the server combines this round's site updates
    (nothing else) into the global model ``model`` of round ``round``.

    A site that failed, or whose update is refused, is left out of the round when at least ``federated.min_sites``
    sites delivered (:func:`fedglioma.federated.aggregate.aggregate_files`); the model's sidecar lists who took
    part and why anyone did not.

    Args:
        updates, update_metas: each training site's ``update.safetensors`` of this round and its sidecar.
        previous: the global model of the previous round.
        model, meta: the global model to write and its sidecar.
        server_state, server_state_meta: the server's optimiser state to write (FedOpt strategies; empty
            otherwise) and its sidecar.
        federated_cfg: the config's ``federated`` section (strategy and its options, quorum, norm bound).
        sites: the training site of each update, in the same order (the training sites of sites.tsv); default:
            the ``site-<ID>`` folder of each file.
        previous_state: the server state of the previous round (none in round 1).
    """
    from fedglioma.federated.aggregate import aggregate_files
    from fedglioma.federated.exchange import sidecar_path
    from fedglioma.federated.strategies import make_strategy

    pairs = [(model, meta), (server_state, server_state_meta), *zip(updates, update_metas, strict=True)]
    for f, side in pairs:
        if sidecar_path(f) != Path(side):
            raise ConfigError(f"{side} is not the sidecar of {f} (expected {sidecar_path(f)})")
    cfg = section(FederatedConfig, federated_cfg, "federated")
    out = aggregate_files(make_strategy(cfg), updates, previous, model, round, previous_state, server_state,
                          site_local_patterns=cfg.site_local_patterns, sites=list(sites) or None,
                          min_sites=cfg.min_sites,
                          update_norm_bound=cfg.update_norm_bound, update_norm_action=cfg.update_norm_action,
                          update_min_cosine=cfg.update_min_cosine)
    left_out = ", ".join(f"{e['site']} ({e['stage']})" for e in out["excluded"]) or "none"
    log.info("round %d: %s from %d sites -> %s; left out: %s", round, cfg.strategy, len(out["sites"]), model,
             left_out)
    return out
