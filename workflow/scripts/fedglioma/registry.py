"""Every workflow step once: its function, the rules that run it and its subcommand.

A rule and its subcommand reach a step the same way. The function's parameters are named after what the rule
names: its inputs, outputs and params, its wildcards, ``threads``, and config sections as ``<section>_cfg``
(``config`` for the whole configuration, ``row`` for the site's ``sites.tsv`` row).

- The one Snakemake entry, ``workflow/scripts/step.py``, calls :func:`run_rule`: it looks up the rule's step and
  maps the job's named inputs, outputs, params and wildcards onto the function's parameters by name
  (:func:`rule_kwargs`). A named input, output or param that the function does not take, or a parameter the
  rule does not give, fails the job with both names: a rule and its function cannot drift apart silently.
- ``fedglioma <group> <command>`` builds its options from the same signature (:func:`add_arguments`): a
  parameter ``training_set`` is ``--training-set``, a list is ``--files A B ...``, a ``<section>_cfg`` comes from
  ``--config`` (default ``config/config.yaml``) with ``--set key=value`` overrides, ``row`` from ``--site`` and
  the config's ``sites`` table; :func:`cli_kwargs` turns the parsed options into the same keyword arguments.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedglioma.errors import ConfigError
from fedglioma.settings import add_config_arguments, config_of


@dataclass(frozen=True)
class Step:
    """One workflow step: ``fedglioma <group> <command>`` and ``rules`` both call ``target``."""

    group: str
    command: str
    target: str  # "module:function"
    rules: tuple[str, ...]
    help: str


#: The workflow's steps, in the order they run.
STEPS: tuple[Step, ...] = (
    Step("cohort", "synth-site", "fedglioma.synth.cohort:synth_site", ("synth_site",),
         "generate one site of the synthetic demo cohort"),
    Step("cohort", "demo-figure", "fedglioma.synth.figure:subject_figure", ("demo_figure",),
         "figure of one synthetic subject of a demo site"),
    Step("cohort", "labels", "fedglioma.io.clinical:harmonise_site", ("labels",),
         "harmonise one site's clinical table into labels.tsv, and its aggregated cohort summary"),
    Step("preprocess", "template-transform", "fedglioma.preprocess.templates:template_transform",
         ("template_transform",), "register one public template onto another, once (sites in another template)"),
    Step("preprocess", "subject", "fedglioma.preprocess.chain:preprocess_subject", ("preprocess_subject",),
         "the whole preprocessing of one subject: step folders (kept while unchanged), training file, QC"),
    Step("preprocess", "site-qc", "fedglioma.preprocess.qc:qc_site", ("qc_site",),
         "a site's QC table, aggregated summary and example figure"),
    Step("train", "init", "fedglioma.train.steps:init_model", ("init_model",),
         "the seeded round-0 global model"),
    Step("train", "training-set", "fedglioma.train.steps:write_training_set", ("training_set",),
         "a site's training-set manifest after QC exclusion"),
    Step("train", "local", "fedglioma.train.steps:train_site_round", ("local_train",),
         "one site's local training in one federated round"),
    Step("train", "validate", "fedglioma.train.steps:validate_site_round", ("validate_round",),
         "a round's global model on one site's validation split (aggregated metrics)"),
    Step("train", "baseline", "fedglioma.train.steps:train_baseline_rounds", ("centralized_train", "local_only_train"),
         "a centralized or local-only baseline, checkpointed and validated every round"),
    Step("federated", "aggregate", "fedglioma.federated.steps:aggregate_round", ("aggregate",),
         "aggregate the sites' updates of one round into the global model"),
    Step("federated", "select", "fedglioma.federated.select:select_model",
         ("select_model", "centralized_select", "local_only_select"),
         "the final round and thresholds from the sites' validation results"),
    Step("evaluate", "model", "fedglioma.evaluate.external:evaluate_model", ("evaluate",),
         "a selected model on the external site: predictions, native masks, metrics, figures"),
    Step("evaluate", "compare", "fedglioma.evaluate.compare:compare_external", ("compare",),
         "federated vs centralized vs local-only on the external site, paired bootstrap"),
    Step("report", "curves", "fedglioma.report.curves:training_curves", ("training_curves",),
         "training curves per site and round (table and figure)"),
    Step("report", "html", "fedglioma.report.steps:write_report", ("report",),
         "the standalone HTML report and headline metrics"),
    Step("predict", "export-bundle", "fedglioma.predict.bundle:export_bundle", ("export_bundle",),
         "the selected model as one checksummed bundle (weights, recipe, thresholds, metrics, model card)"),
    Step("predict", "subject", "fedglioma.predict.patient:predict_site_subject", ("predict_subject",),
         "one patient of a site with role predict: mask on the input grid, markers, QC, one-page report"),
    Step("predict", "table", "fedglioma.predict.patient:predict_table", ("predict_table",),
         "a predict site's table of its patients' predictions (stays at the site)"),
)


def step_of_rule(rule: str) -> Step:
    """The step rule ``rule`` runs."""
    for step in STEPS:
        if rule in step.rules:
            return step
    raise ConfigError(f"rule {rule!r} runs no registered step (fedglioma.registry.STEPS)")


def function(step: Step) -> Callable[..., Any]:
    """The step's function (its module imported on demand)."""
    module, name = step.target.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One parameter of a step function, classified."""

    name: str
    kind: str  # "value", "config", "row", "threads"
    required: bool
    sequence: bool
    scalar: type  # str, int, float or bool
    default: Any

    @property
    def section(self) -> str | None:
        """The config section a ``config`` parameter takes (``None``: the whole configuration)."""
        return None if self.name == "config" else self.name.removesuffix("_cfg")


def _unwrap(hint: Any) -> tuple[bool, type]:
    """(is a sequence, scalar type) of a type hint such as ``Sequence[str]``, ``int``, ``str | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if args else str
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence, typing.Sequence):
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
        return True, _unwrap(inner)[1]
    if hint in (int, float, bool):
        return False, hint
    return False, str


def params(func: Callable[..., Any]) -> list[Param]:
    """The classified parameters of a step function."""
    hints = typing.get_type_hints(func)
    out = []
    for name, p in inspect.signature(func).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = ("threads" if name == "threads" else "row" if name == "row"
                else "config" if name == "config" or name.endswith("_cfg") else "value")
        sequence, scalar = _unwrap(hints.get(name, str))
        default = None if p.default is p.empty else p.default
        out.append(Param(name, kind, p.default is p.empty, sequence, scalar, default))
    return out


def _coerce(value: Any, p: Param) -> Any:
    if value is None:
        return None
    if p.kind == "config":
        return dict(value)
    if p.sequence:
        values = [value] if isinstance(value, (str, Path)) else list(value)
        return [p.scalar(v) if p.scalar in (int, float) else v for v in values]
    if p.scalar in (int, float) and isinstance(value, str):
        return p.scalar(value)
    return value


# --------------------------------------------------------------------------- from a Snakemake job


def rule_kwargs(func: Callable[..., Any], smk: Any) -> dict[str, Any]:
    """Keyword arguments of ``func`` from a Snakemake job: its named params, inputs, outputs and wildcards."""
    named = {src: dict(getattr(smk, src).items()) for src in ("params", "input", "output", "wildcards")}
    used: set[tuple[str, str]] = set()
    kwargs: dict[str, Any] = {}
    where = f"rule {smk.rule} ({func.__module__}.{func.__name__})"
    for p in params(func):
        if p.kind == "threads":
            kwargs[p.name] = int(smk.threads)
            continue
        found = [src for src in named if p.name in named[src]]
        if len(found) > 1:
            raise ConfigError(f"{where}: {p.name!r} is named by the rule's {' and '.join(found)}")
        if found:
            used.add((found[0], p.name))
            kwargs[p.name] = _coerce(named[found[0]][p.name], p)
        elif p.required:
            raise ConfigError(f"{where}: the rule gives no {p.name!r} (name an input, output, param or wildcard so)")
        else:
            kwargs[p.name] = p.default
    extra = [f"{src}.{k}" for src in ("params", "input", "output") for k in named[src] if (src, k) not in used]
    if extra:
        raise ConfigError(f"{where}: the rule names {', '.join(extra)}, which the function does not take")
    return kwargs


def run_rule(smk: Any) -> Any:
    """Run the step of rule ``smk.rule`` with the job's named inputs, outputs, params and wildcards."""
    from fedglioma.smk import run

    func = function(step_of_rule(smk.rule))
    return run(smk, func, **rule_kwargs(func, smk))


# --------------------------------------------------------------------------- from the command line

_ARG = re.compile(r"^\s{4,}([a-z_][a-z0-9_, ]*):\s*(.*)$")


def _arg_help(func: Callable[..., Any]) -> dict[str, str]:
    """Per-parameter help from the ``Args:`` section of the function's docstring."""
    doc = inspect.getdoc(func) or ""
    if "Args:" not in doc:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    for line in doc.split("Args:", 1)[1].splitlines():
        m = _ARG.match("    " + line) if line.startswith("    ") and not line.startswith("        ") else None
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                out[n] = m.group(2).strip()
        elif line.startswith("        ") and names:
            for n in names:
                out[n] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


def add_arguments(parser: argparse.ArgumentParser, func: Callable[..., Any]) -> None:
    """Options of ``func``'s parameters (see the module docstring)."""
    helps = _arg_help(func)
    ps = params(func)
    if any(p.kind in ("config", "row") for p in ps):
        add_config_arguments(parser)
    for p in ps:
        flag = "--" + p.name.replace("_", "-")
        text = helps.get(p.name, "")
        if p.kind == "config":
            continue
        if p.kind == "row":
            parser.add_argument("--site", required=True, help="site ID (its row of the config's sites table)")
            parser.add_argument("--sites", default=None, help="sites.tsv (default: the config's `sites`)")
        elif p.kind == "threads":
            parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
        elif p.scalar is bool and not p.sequence:
            parser.add_argument(flag, dest=p.name, action=argparse.BooleanOptionalAction, default=p.default,
                                help=text)
        else:
            kw: dict[str, Any] = {"dest": p.name, "required": p.required, "help": text}
            if p.scalar in (int, float):
                kw["type"] = p.scalar
            if p.sequence:
                kw["nargs"] = "+" if p.required else "*"
                kw["default"] = list(p.default or [])
            elif not p.required:
                kw["default"] = p.default
                kw["help"] = (text + " " if text else "") + f"(default: {p.default})"
            parser.add_argument(flag, **kw)


def cli_kwargs(func: Callable[..., Any], args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``func`` from options built by :func:`add_arguments`."""
    from fedglioma.config import load_sites

    ps = params(func)
    config = config_of(args) if any(p.kind in ("config", "row") for p in ps) else None
    kwargs: dict[str, Any] = {}
    for p in ps:
        if p.kind == "config":
            assert config is not None
            kwargs[p.name] = dict(config) if p.section is None else dict(config[p.section])
        elif p.kind == "row":
            assert config is not None
            sites_file = args.sites or config["sites"]
            rows = {r.site: r for r in load_sites(sites_file)}
            if args.site not in rows:
                raise ConfigError(f"site {args.site!r} is not in {sites_file} (sites: {', '.join(rows)})")
            kwargs["row"] = rows[args.site]
        else:
            kwargs[p.name] = _coerce(getattr(args, p.name), p)
    return kwargs


def register(subparsers: argparse._SubParsersAction, group: str, *, selected: str | None = None) -> None:
    """Add the steps of ``group`` to ``subparsers`` (each sets ``func``: parsed options -> exit code).

    Only the ``selected`` command gets its options: that imports its step's module (torch, ANTsPy, ...) and no
    other, so ``fedglioma <stage> --help`` and every other command start quickly.
    """
    for step in STEPS:
        if step.group != group:
            continue
        p = subparsers.add_parser(step.command, help=step.help,
                                  description=f"{step.help}. Also run by rule(s) {', '.join(step.rules)} "
                                              f"({step.target}).")
        if step.command == selected:
            add_arguments(p, function(step))
        p.set_defaults(func=_handler(step))


def _handler(step: Step) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from fedglioma.threads import set_threads

        func = function(step)
        kwargs = cli_kwargs(func, args)
        set_threads(kwargs.get("threads", 1))
        func(**kwargs)
        return 0

    return handler
