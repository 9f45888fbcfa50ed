"""One server round on files: check the updates, aggregate, write the new global model and server state."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedglioma.errors import UpdateRejected
from fedglioma.faults import fault_point
from fedglioma.federated.exchange import load_params, open_update, save_params, spec_of
from fedglioma.federated.params import split_params
from fedglioma.federated.strategies import Strategy

log = logging.getLogger(__name__)


def aggregate_files(
    strategy: Strategy,
    update_paths: Sequence[str | Path],
    prev_global: str | Path,
    out_global: str | Path,
    round: int,
    server_state_in: str | Path | None = None,
    server_state_out: str | Path | None = None,
    *,
    site_local_patterns: Sequence[str] = (),
) -> dict[str, Any]:
    """Aggregate the site updates of ``round`` into the global model of ``round``.

    The previous global model defines the expected shared names, shapes and dtypes (all its parameters except
    those matching ``site_local_patterns``). Every update is checked (sidecar, round, sha256, names, shapes,
    dtypes; finiteness when read) before it is used. Site-local parameters of the new global model are copied
    from the previous one (they are never aggregated).

    Args:
        strategy: the aggregation strategy.
        update_paths: the sites' ``update.safetensors`` files (sidecars beside them).
        prev_global: global model of round ``round - 1`` (sidecar beside it).
        out_global: global model of ``round`` to write (sidecar ``.json`` beside it).
        round: this round (>= 1).
        server_state_in: the strategy state after ``round - 1`` (``None`` or a missing file: empty state).
        server_state_out: where to write the strategy state after this round (empty file for stateless ones).
        site_local_patterns: ``fnmatch`` patterns of parameters kept at the sites.

    Returns:
        the sidecar written next to ``out_global``.

    Raises:
        UpdateRejected: a bad update (the message names the site and round).
    """
    if not update_paths:
        raise UpdateRejected(f"round {round}: no site updates to aggregate")
    prev, prev_side = load_params(prev_global)
    shared_prev, local_prev = split_params(prev, site_local_patterns)
    expected = spec_of(shared_prev)
    updates = [open_update(p, expected=expected, round=round) for p in update_paths]
    state: dict[str, torch.Tensor] = {}
    if server_state_in is not None and Path(server_state_in).is_file():
        state, _ = load_params(server_state_in)
    log.info("round %d: aggregating %d updates with %s", round, len(updates), strategy.name)
    new_shared, new_state = strategy.aggregate(shared_prev, iter(updates), state)
    for k, v in new_shared.items():
        if not bool(torch.isfinite(v).all()):
            raise UpdateRejected(f"round {round}: aggregated tensor {k!r} is not finite")
    new = {k: (new_shared[k] if k in new_shared else local_prev[k]) for k in prev}
    sites = [{"site": u.site, "n_train": u.n_train, "sha256": u.sidecar.get("sha256")} for u in updates]
    side = save_params(
        out_global,
        new,
        {
            "kind": "global",
            "round": round,
            "strategy": strategy.name,
            "sites": sites,
            "n_train": sum(u.n_train for u in updates),
            "site_local_patterns": list(site_local_patterns),
            "model": prev_side.get("model"),
            "previous_sha256": prev_side.get("sha256"),
            "torch_threads": torch.get_num_threads(),
        },
    )
    fault_point(f"aggregate/round-{round}/after-model")  # global model and sidecar written, server state not
    if server_state_out is not None:
        save_params(server_state_out, new_state, {"kind": "server_state", "round": round, "strategy": strategy.name})
    return side

