"""The ``fedglioma`` command line: one subcommand per pipeline step.

Each sub-package contributes its subcommands through a ``register(subparsers)``
function in its ``cli`` module.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedglioma import __version__
from fedglioma.errors import FedgliomaError
from fedglioma.logs import setup_logging

#: Modules whose ``register(subparsers)`` adds subcommands.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "fedglioma.io.cli",
    "fedglioma.synth.cli",
    "fedglioma.preprocess.cli",
    "fedglioma.train.cli",
    "fedglioma.federated.cli",
    "fedglioma.evaluate.cli",
    "fedglioma.report.cli",
    "fedglioma.audit",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="fedglioma",
        description="Federated multi-task deep learning on preoperative glioma MRI: every workflow step as a command.",
    )
    parser.add_argument("--version", action="version", version=f"fedglioma {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log", help="also append the log to this file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedglioma`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log, logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except FedgliomaError as e:
        logging.getLogger("fedglioma").error("%s", e)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
