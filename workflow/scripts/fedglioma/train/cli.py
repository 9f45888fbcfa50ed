"""Subcommands ``init-model``, ``local-train`` and ``validate`` (wired into ``fedglioma.cli`` by ``register``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedglioma.settings import add_config_argument, load_config

log = logging.getLogger(__name__)


def _init_model(args: argparse.Namespace) -> int:
    from fedglioma.train.local import init_global

    cfg = load_config(args.config)
    seed = cfg.train.seed if args.seed is None else args.seed
    side = init_global(args.out, cfg.model, seed)
    log.info("wrote %s (%d parameters)", args.out, side["numel"])
    return 0


def _local_train(args: argparse.Namespace) -> int:
    from fedglioma.train.local import local_train

    cfg = load_config(args.config)
    local_train(
        args.global_in,
        args.npz,
        args.labels,
        args.out,
        args.sidecar,
        site=args.site,
        round=args.round,
        train_cfg=cfg.train,
        model_cfg=cfg.model,
        strategy_cfg=cfg.federated,
        threads=args.threads,
        local_in=args.local_in,
        local_out=args.local_out,
        endpoints=cfg.endpoints,
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from fedglioma.train.local import validate

    cfg = load_config(args.config)
    validate(
        args.global_in,
        args.npz,
        args.labels,
        args.out,
        site=args.site,
        round=args.round,
        train_cfg=cfg.train,
        model_cfg=cfg.model,
        threads=args.threads,
        local_in=args.local_in,
        site_local_patterns=cfg.federated.site_local_patterns,
        endpoints=cfg.endpoints,
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    add_config_argument(p, "model:, train:, federated: and endpoints: sections")


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
