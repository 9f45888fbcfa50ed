"""Subcommands ``init-model``, ``local-train`` and ``validate`` (wired into ``fedglioma.cli`` by ``register``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedglioma.endpoints import load_endpoints
from fedglioma.train.config import load_configs

log = logging.getLogger(__name__)


def _init_model(args: argparse.Namespace) -> int:
    from fedglioma.train.local import init_global

    model_cfg, train_cfg, _ = load_configs(args.config)
    seed = train_cfg.seed if args.seed is None else args.seed
    side = init_global(args.out, model_cfg, seed)
    log.info("wrote %s (%d parameters)", args.out, side["numel"])
    return 0


def _local_train(args: argparse.Namespace) -> int:
    from fedglioma.train.local import local_train

    model_cfg, train_cfg, fed_cfg = load_configs(args.config)
    local_train(
        args.global_in,
        args.npz,
        args.labels,
        args.out,
        args.sidecar,
        site=args.site,
        round=args.round,
        train_cfg=train_cfg,
        model_cfg=model_cfg,
        strategy_cfg=fed_cfg,
        threads=args.threads,
        local_in=args.local_in,
        local_out=args.local_out,
        endpoints=load_endpoints(args.config),
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fedglioma.train.local import validate

    model_cfg, train_cfg, fed_cfg = load_configs(args.config)
    validate(
        args.global_in,
        args.npz,
        args.labels,
        args.out,
        site=args.site,
        round=args.round,
        train_cfg=train_cfg,
        model_cfg=model_cfg,
        threads=args.threads,
        local_in=args.local_in,
        site_local_patterns=fed_cfg.site_local_patterns,
        endpoints=load_endpoints(args.config),
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, help="config.yaml (sections model:, train:, federated:, endpoints:); defaults if omitted"
    )


def _site_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--global", dest="global_in", type=Path, required=True, help="global model (.safetensors)")
    p.add_argument("--labels", type=Path, required=True, help="the site's labels.tsv")
    p.add_argument("--site", required=True, help="site ID")
    p.add_argument("--round", type=int, required=True, help="federated round")
    p.add_argument("--local-in", type=Path, help="the site's local.safetensors of the previous round (optional)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("npz", nargs="+", type=Path, help="the site's sub-{subject}_train.npz files")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``init-model``, ``local-train`` and ``validate`` to a subparsers object."""
    p = subparsers.add_parser("init-model", help="write the seeded round-0 global model")
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="global model to write (.safetensors; sidecar .json beside)")
    p.add_argument("--seed", type=int, help="default: train.seed")
    p.set_defaults(func=_init_model)

    p = subparsers.add_parser("local-train", help="train the previous global model on one site for one round")
    _common(p)
    _site_args(p)
    p.add_argument("--out", type=Path, required=True, help="update.safetensors to write (shared parameters)")
    p.add_argument("--sidecar", type=Path, help="its sidecar (default: --out with .json)")
    p.add_argument("--local-out", type=Path, help="local.safetensors to write (site-local parameters; stays at site)")
    p.set_defaults(func=_local_train)

    p = subparsers.add_parser("validate", help="site-aggregated validation metrics of a global model")
    _common(p)
    _site_args(p)
    p.add_argument("--out", type=Path, required=True, help="validation JSON to write")
    p.set_defaults(func=_validate)
