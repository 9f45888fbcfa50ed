"""The ``fedglioma`` command line: ``fedglioma <stage> <command>``.

Every workflow step is a command of its stage, built from the step's function (:mod:`fedglioma.registry`): the
rule and the command call the same function with the same arguments. A stage also holds tools that no rule runs
(checking inputs, one preprocessing step on one folder, metrics from tables), added by its module's
``register(subparsers)``. Step parameters come from ``--config`` (default ``config/config.yaml``) with
``--set key=value`` overrides, in every command that takes any.
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

#: Stage -> (help, modules whose ``register(subparsers)`` add its tools). Its workflow steps come from the registry.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cohort": ("check the inputs, the synthetic demo cohort, harmonised labels",
               ("fedglioma.io.cli", "fedglioma.synth.cli")),
    "preprocess": ("preprocessing of one subject, or one step of it; QC; the mapping back to native space",
                   ("fedglioma.preprocess.cli",)),
    "train": ("the round-0 model, local training and validation of one site and round, the baselines", ()),
    "federated": ("aggregation of a round, model selection", ()),
    "evaluate": ("external evaluation, the comparison of the arms, metrics from tables", ("fedglioma.evaluate.cli",)),
    "report": ("training curves, the HTML report, the headline metrics", ("fedglioma.report.cli",)),
    "predict": ("new patients: one patient from NIfTI or DICOM with a model bundle; the bundle; a predict site",
                ("fedglioma.predict.cli",)),
    "workflow": ("checks of the workflow itself (site scope of every job)", ("fedglioma.audit",)),
    "federation": ("the cross-institution mode over Flower: the consortium's certificates and keys, the "
                   "coordinator's SuperLink and run, a site's SuperNode", ("fedglioma.federation.cli",)),
}


def _selected(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """The stage and command named on the command line (the first two words that are not options)."""
    words = [a for a in argv if not a.startswith("-")]
    return (words[0] if words else None), (words[1] if len(words) > 1 else None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The top-level parser: one sub-command per stage, each with its commands; the workflow step named in
    ``argv`` gets its options (:func:`fedglioma.registry.register`)."""
    from fedglioma import registry

    parser = argparse.ArgumentParser(
        prog="fedglioma",
        description="Federated multi-task deep learning on preoperative glioma MRI: every workflow step as a "
                    "command, `fedglioma <stage> <command>` (`fedglioma <stage> --help` lists them).",
    )
    parser.add_argument("--version", action="version", version=f"fedglioma {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log", help="also append the log to this file")
    stage, command = _selected(argv)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for group, (help_, modules) in GROUPS.items():
        g = stages.add_parser(group, help=help_, description=help_)
        commands = g.add_subparsers(dest="command", metavar="COMMAND", required=True)
        registry.register(commands, group, selected=command if group == stage else None)
        for name in modules:
            importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedglioma`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.log, logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except FedgliomaError as e:
        logging.getLogger("fedglioma").error("%s", e)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
