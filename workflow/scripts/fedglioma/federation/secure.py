"""Secure aggregation across institutions: Flower's SecAgg+ (its server workflow and client mod), so that the
coordinator only ever sees the weighted sum of the sites' parameters, never one site's (docs/federation.md,
"Secure aggregation").

Each site scales its trained shared parameters by its weight (its number of training subjects over
``max_weight``), quantises them stochastically onto ``quantization_range`` levels over
``[-clipping_range, clipping_range]`` and masks them; the masks cancel in the sum. The coordinator divides the sum
by the total weight: FedAvg up to the quantisation error, at most ``n_sites * 2 * clipping_range /
quantization_range / sum(weights)`` per parameter (:func:`error_bound`). The update checks of the workflow (norm
bound, direction check) and the strategies that need single updates cannot run on a sum: :func:`check_config`
refuses them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedglioma.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import Context, RecordDict
    from flwr.serverapp import Grid

    from fedglioma.federation.roles import CoordinatorRole, Payload

log = logging.getLogger("fedglioma.federation")

#: strategies whose server step is the weighted mean of the sites' parameters (FedProx differs at the sites only)
SECURE_STRATEGIES = ("fedavg", "fedprox")
#: SecAgg+ parameters: Flower's defaults (the range of a parameter, the levels of the quantisation, the modulus)
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
#: the record the SecAgg+ stages carry (Flower's ``RECORD_KEY_CONFIGS``)
STAGE_RECORD = "secaggplus_configs"


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse what cannot run on a sum of updates, every problem at once."""
    fed = config["federated"]
    problems = []
    if fed["strategy"] not in SECURE_STRATEGIES:
        problems.append(f"federated.strategy {fed['strategy']!r} needs each site's update (only "
                        f"{' and '.join(SECURE_STRATEGIES)} aggregate a weighted mean)")
    if fed.get("update_norm_bound") is not None:
        problems.append("federated.update_norm_bound checks each site's update norm")
    if fed.get("update_min_cosine") is not None:
        problems.append("federated.update_min_cosine compares each site's update with the others'")
    if problems:
        raise ConfigError("secure aggregation shows the coordinator only the sum of the updates, so it cannot run "
                          "with: " + "; ".join(problems) + ". Fix: use strategy fedavg or fedprox without "
                          "update_norm_bound and update_min_cosine, or run without --secure-aggregation")


def error_bound(weights: Sequence[float], max_weight: float) -> float:
    """The largest difference, per parameter, between the securely aggregated mean and FedAvg's of the same
    parameters (all within the clipping range ``c``): one quantisation step ``2c / quantization_range`` per site
    (stochastic rounding) over the quantised total weight, plus ``c`` times the weights' own quantisation error,
    plus the rounding of the result to float32."""
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    quantised = [round(w / max_weight * QUANTIZATION_RANGE) / QUANTIZATION_RANGE for w in weights]
    exact = [w / sum(weights) for w in weights]
    drift = sum(abs(q / sum(quantised) - e) for q, e in zip(quantised, exact, strict=True))
    return len(weights) * step / sum(quantised) + CLIPPING_RANGE * drift + CLIPPING_RANGE * 2.0**-23


def secure_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
    """The ClientApp's mod: the SecAgg+ stages go through Flower's ``secaggplus_mod``, every other message (the
    roster's query, plain training, validation) straight to the app."""
    from flwr.client.mod import secaggplus_mod

    if STAGE_RECORD in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def shared_arrays(update_path: str) -> tuple[list[Any], list[str]]:
    """A site's update as the float arrays SecAgg+ sums, in sorted name order; refuses a parameter outside the
    clipping range (it would be clipped silently)."""
    import numpy as np
    from safetensors.numpy import load_file

    tensors = load_file(update_path)
    names = sorted(tensors)
    arrays = [np.asarray(tensors[n], dtype=np.float64) for n in names]
    worst = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    if worst > CLIPPING_RANGE:
        raise ConfigError(f"a parameter of magnitude {worst:.3g} lies outside secure aggregation's clipping range "
                          f"+-{CLIPPING_RANGE}: it would be clipped. Fix: run without --secure-aggregation")
    return arrays, names


def secure_round(grid: Grid, context: Context, coord: CoordinatorRole, nodes: Mapping[str, int], rnd: int,
                 model: Payload, n_train: Mapping[str, int], timeout: float) -> dict[str, Any]:
    """Round ``rnd`` of training under SecAgg+: the sites of ``nodes`` train from ``model`` (a
    :class:`~fedglioma.federation.roles.Payload`), the coordinator receives only the weighted mean of their shared
    parameters and writes it as the global model of the round (:meth:`CoordinatorRole.write_secure_global`).
    Returns that model's sidecar."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.common import FitIns, Parameters
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    site_of = {node: site for site, node in nodes.items()}
    # at least 2 (SecAgg+ needs a pair), at most the sites asked: the masks' reconstruction threshold, and the
    # quorum recorded with the global model
    quorum = min(max(2, coord.min_sites), len(nodes))
    max_weight = float(max(n_train[s] for s in nodes))
    written: dict[str, Any] = {}

    class Secure(Strategy):  # the legacy strategy interface SecAgg+ drives: only fit is used
        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            config = {"round": rnd, "digest": coord.digest, "secure": True, "model": model.data,
                      "sidecar": model.sidecar}
            return [(GridClientProxy(node, grid, context.run_id), FitIns(Parameters([], "raw"), config))
                    for node in nodes.values()]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict]:
            from flwr.common import parameters_to_ndarrays

            sites = {site_of[proxy.node_id]: int(res.num_examples) for proxy, res in results}
            mean = parameters_to_ndarrays(results[0][1].parameters) if results else []
            written.update(coord.write_secure_global(
                rnd, mean, sites, quorum=quorum, failures=len(failures),
                absent=sorted(set(coord.sites) - set(sites)),
                secure={"clipping_range": CLIPPING_RANGE, "quantization_range": QUANTIZATION_RANGE,
                        "modulus_range": MODULUS_RANGE, "max_weight": max_weight,
                        "error_bound": error_bound(list(sites.values()), max_weight) if sites else None}))
            return None, {}

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
            return []

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Any) -> None:
            return None

    legacy = LegacyContext(context, strategy=Secure())
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    # every site holds a share of every other's secrets (num_shares 1.0: all); the masks of a site that drops out
    # after sending can be removed as long as the quorum of sites is left
    SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=quorum,
                       max_weight=max_weight, clipping_range=CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
                       modulus_range=MODULUS_RANGE, timeout=timeout)(grid, legacy)
    if not written:
        raise ConfigError(f"round {rnd}: secure aggregation did not complete (fewer than {quorum} sites took part "
                          "in every stage; see the ServerApp's log)")
    return written


def fit_reply(update_path: str, n_train: int) -> RecordDict:
    """The ClientApp's reply to the SecAgg+ training stage: the site's shared parameters and weight (the mod
    quantises and masks them, then clears the arrays before the message leaves)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    arrays, _ = shared_arrays(update_path)
    return fitres_to_recorddict(FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), n_train, {}), False)
