"""Subcommands ``aggregate`` and ``select-model`` (wired into ``fedglioma.cli`` by ``register``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedglioma.settings import STRATEGY_NAMES, add_config_argument, load_config

log = logging.getLogger(__name__)


def _aggregate(args: argparse.Namespace) -> int:
    from fedglioma.federated.aggregate import aggregate_files
    from fedglioma.federated.strategies import make_strategy

    cfg = load_config(args.config).federated
    if args.strategy is not None:
        cfg = cfg.model_copy(update={"strategy": args.strategy})
    side = aggregate_files(
        make_strategy(cfg),
        args.updates,
        args.prev,
        args.out,
        args.round,
        args.state_in,
        args.state_out,
        site_local_patterns=cfg.site_local_patterns,
    )
    log.info("round %d: %s from %d sites -> %s", args.round, cfg.strategy, len(side["sites"]), args.out)
    return 0


def _select_model(args: argparse.Namespace) -> int:
    from fedglioma.federated.select import select_model

    final = select_model(args.validation, args.out, model_template=args.model_template)
    log.info("final round %d (score %s)", final["round"], final["score"])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aggregate`` and ``select-model`` to a subparsers object."""
    p = subparsers.add_parser("aggregate", help="aggregate the site updates of one round into a global model")
    add_config_argument(p, "federated: section")
    p.add_argument("--strategy", choices=STRATEGY_NAMES, help="overrides federated.strategy")
    p.add_argument("--round", type=int, required=True, help="this round (>= 1)")
    p.add_argument("--prev", type=Path, required=True, help="global model of the previous round")
    p.add_argument("--out", type=Path, required=True, help="global model of this round (.safetensors)")
    p.add_argument("--state-in", type=Path, help="server state of the previous round (FedOpt); optional")
    p.add_argument("--state-out", type=Path, help="server state of this round to write")
    p.add_argument("updates", nargs="+", type=Path, help="update.safetensors of each site (sidecars beside)")
    p.set_defaults(func=_aggregate)

    p = subparsers.add_parser("select-model", help="pick the final round and thresholds from validation JSONs")
    p.add_argument("--out", type=Path, required=True, help="final.json to write")
    p.add_argument("--model-template", help="e.g. results/federated/round-{round}/global.safetensors")
    p.add_argument("validation", nargs="+", type=Path, help="validation JSONs of all sites and rounds")
    p.set_defaults(func=_select_model)
