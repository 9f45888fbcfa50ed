"""One server round on files: check the updates, leave out what failed or was refused, bound the update norms,
aggregate if the quorum delivered, write the new global model and server state."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fedglioma.errors import UpdateRejected
from fedglioma.faults import fault_point
from fedglioma.federated.exchange import (
    Update,
    load_params,
    open_update,
    save_params,
    site_hint,
    spec_of,
    update_status,
)
from fedglioma.federated.params import split_params
from fedglioma.federated.robust import ScaledUpdate, direction_cosines, norm_bound, update_norm
from fedglioma.federated.strategies import Strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exclusion:
    """A site left out of a round, and why: ``failed`` (at the site, after its attempts), ``refused`` (the update
    failed a check), ``direction`` (refused by the direction check) or ``norm`` (refused by the update-norm
    bound)."""

    site: str
    stage: Literal["failed", "refused", "direction", "norm"]
    reason: str


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
    sites: Sequence[str] | None = None,
    min_sites: int = 1,
    update_norm_bound: float | None = None,
    update_norm_action: Literal["clip", "refuse"] = "clip",
    update_min_cosine: float | None = None,
) -> dict[str, Any]:
    """Aggregate the site updates of ``round`` into the global model of ``round``.

    The previous global model defines the expected shared names, shapes and dtypes (all its parameters except
    those matching ``site_local_patterns``). Each update is checked before it is used (sidecar, site, round,
    sha256, header, the global model it was trained from, names, shapes, dtypes, finite values) and its norm taken.
    A site that recorded a failure and an update that fails a check (a copy of another site's update fails the
    header check) are left out of the round with the reason; so is an update whose direction disagrees with the
    others' (cosine with the median of the others' changes below ``update_min_cosine``, checked when three or more
    updates are accepted), and then one above the norm bound when ``update_norm_action`` is ``refuse`` (``clip``
    scales it down instead). The round aggregates if at least ``min_sites`` sites (capped at
    the number of sites) are left. Site-local parameters of the new global model are copied from the previous one
    (they are never aggregated).

    Args:
        strategy: the aggregation strategy.
        update_paths: the sites' ``update.safetensors`` files (sidecars beside them).
        prev_global: global model of round ``round - 1`` (sidecar beside it).
        out_global: global model of ``round`` to write (sidecar ``.json`` beside it).
        round: this round (>= 1).
        server_state_in: the strategy state after ``round - 1`` (``None`` or a missing file: empty state).
        server_state_out: where to write the strategy state after this round (empty file for stateless ones).
        site_local_patterns: ``fnmatch`` patterns of parameters kept at the sites.
        sites: the site each update path belongs to (the training sites of sites.tsv, in order); default: the
            ``site-<ID>`` folder the file lies in.
        min_sites: the quorum (``federated.min_sites``).
        update_norm_bound: ``k`` of the norm bound (:mod:`fedglioma.federated.robust`); ``None``: no bound.
        update_norm_action: ``clip`` or ``refuse`` an update above the bound.
        update_min_cosine: the direction check's threshold (:func:`~fedglioma.federated.robust.direction_cosines`);
            ``None``: no check.

    Returns:
        the sidecar written next to ``out_global``: the participating ``sites`` (n_train, sha256, norm, clip
        scale), the ``excluded`` sites with stage and reason, the ``quorum``, the norm ``bound``, and what the
        strategy decided (:meth:`~fedglioma.federated.strategies.Strategy.round_record`: ``trimmed_per_end``,
        ``krum``).

    Raises:
        UpdateRejected: fewer than the quorum delivered an accepted update (naming every left-out site and why).
    """
    paths = [Path(p) for p in update_paths]
    if not paths:
        raise UpdateRejected(f"round {round}: no site updates to aggregate")
    if sites is not None and len(sites) != len(paths):
        raise UpdateRejected(f"round {round}: {len(paths)} update files for {len(sites)} sites {list(sites)}")
    prev, prev_side = load_params(prev_global)
    shared_prev, local_prev = split_params(prev, site_local_patterns)
    expected = spec_of(shared_prev)
    excluded: list[Exclusion] = []
    accepted: dict[str, Update] = {}
    norms: dict[str, float] = {}
    digests: dict[str, str] = {}
    for i, path in enumerate(paths):
        slot = sites[i] if sites is not None else site_hint(path)
        failed = update_status(path)
        if failed is not None:
            excluded.append(Exclusion(slot, "failed", f"failed at the site after {failed.get('attempts', '?')} "
                                      f"attempt(s): {failed.get('reason', 'no reason recorded')}"))
            continue
        try:
            u = open_update(path, expected=expected, round=round, site=slot if sites is not None else None,
                            global_sha256=prev_side.get("sha256"))
            norms[slot] = update_norm(u, shared_prev)
        except UpdateRejected as exc:
            excluded.append(Exclusion(slot, "refused", str(exc)))
            continue
        accepted[slot] = u
        digests[slot] = str(u.sidecar.get("sha256"))

    cosines: dict[str, float] = {}
    if update_min_cosine is not None:
        if len(accepted) >= 3:
            cosines = direction_cosines(accepted, shared_prev)
            for slot, c in cosines.items():
                if c < update_min_cosine:
                    excluded.append(Exclusion(slot, "direction", f"update direction disagrees with the other sites': "
                                              f"cosine {c:.3g} with the median of their changes, below "
                                              f"{update_min_cosine:g} (federated.update_min_cosine)"))
                    del accepted[slot], norms[slot]
        else:
            log.warning("round %d: direction check skipped: %d accepted update(s), it needs 3", round, len(accepted))

    bound = norm_bound(norms, update_norm_bound) if update_norm_bound is not None and norms else None
    scales: dict[str, float] = {}
    if bound is not None:
        for slot, n in sorted(norms.items()):
            if n <= bound:
                continue
            if update_norm_action == "refuse":
                excluded.append(Exclusion(slot, "norm", f"update norm {n:.4g} above the bound {bound:.4g} "
                                          f"({update_norm_bound:g} x the round's median norm)"))
                del accepted[slot]
            else:
                scales[slot] = bound / n
                accepted[slot] = ScaledUpdate(accepted[slot], shared_prev, scales[slot])

    quorum = min(min_sites, len(paths))
    for e in excluded:
        log.warning("round %d: site %s left out (%s): %s", round, e.site, e.stage, e.reason)
    if len(accepted) < quorum:
        why = "; ".join(f"site {e.site} ({e.stage}): {e.reason}" for e in excluded)
        raise UpdateRejected(f"round {round}: {len(accepted)} of {len(paths)} sites delivered an accepted update, "
                             f"below the quorum of {quorum} (federated.min_sites). Left out: {why}")

    updates = list(accepted.values())
    state: dict[str, torch.Tensor] = {}
    if server_state_in is not None and Path(server_state_in).is_file():
        state, _ = load_params(server_state_in)
    log.info("round %d: aggregating %d updates with %s", round, len(updates), strategy.name)
    new_shared, new_state = strategy.aggregate(shared_prev, iter(updates), state)
    for k, v in new_shared.items():
        if not bool(torch.isfinite(v).all()):
            raise UpdateRejected(f"round {round}: aggregated tensor {k!r} is not finite")
    new = {k: (new_shared[k] if k in new_shared else local_prev[k]) for k in prev}
    participants = [{"site": s, "n_train": u.n_train, "sha256": digests[s], "norm": norms[s],
                     "clip_scale": scales.get(s), "cosine": cosines.get(s)} for s, u in accepted.items()]
    extra = strategy.round_record()
    side = save_params(
        out_global,
        new,
        {
            "kind": "global",
            "round": round,
            "strategy": strategy.name,
            "sites": participants,
            "excluded": [asdict(e) for e in excluded],
            "quorum": quorum,
            "update_norm_bound": None if bound is None else {"k": update_norm_bound, "bound": bound,
                                                               "action": update_norm_action},
            "update_min_cosine": None if update_min_cosine is None else {"threshold": update_min_cosine,
                                                                         "checked": bool(cosines)},
            **extra,
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
