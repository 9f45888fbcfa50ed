"""One route from a rule or a subcommand to each preprocessing step on a step folder.

The chain of one subject (:func:`fedglioma.preprocess.chain.preprocess_subject`, rule ``preprocess_subject``) and
the commands (``fedglioma preprocess coregister``, ``skullstrip``, ``register-atlas``, ``n4``, ``normalise``) both call
:func:`run_step` with the same arguments: the step's config section as ``params``, and what the site declared
(:class:`~fedglioma.declared.Declared`, from its ``sites.tsv`` row) for the steps that depend on it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedglioma.declared import Declared
from fedglioma.errors import ConfigError

#: Step name (= rule name) -> "module:function" of the step.
STEPS: dict[str, str] = {
    "coregister": "fedglioma.preprocess.coregister:coregister",
    "skullstrip": "fedglioma.preprocess.skullstrip:skullstrip",
    "register_atlas": "fedglioma.preprocess.atlas:register_atlas",
    "n4": "fedglioma.preprocess.intensity:n4",
    "normalise": "fedglioma.preprocess.intensity:normalise",
}


def step_function(step: str) -> Callable[..., None]:
    """The function of preprocessing step ``step`` (imported on demand: ANTs and torch only where needed)."""
    if step not in STEPS:
        raise ConfigError(f"unknown preprocessing step {step!r}; known: {', '.join(STEPS)}")
    module, name = STEPS[step].split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def step_kwargs(step: str, *, params: Mapping[str, Any], declared: Declared | None = None,
                template_transform: str | Path | None = None) -> dict[str, Any]:
    """Keyword arguments of ``step``'s function: ``params`` plus the site facts the step takes."""
    accepted = inspect.signature(step_function(step)).parameters
    kwargs = dict(params)
    if "declared" in accepted:
        kwargs["declared"] = declared or Declared()
    if template_transform is not None:
        if "template_transform" not in accepted:
            raise ConfigError(f"step {step} takes no template transform")
        kwargs["template_transform"] = Path(template_transform)
    return kwargs


def run_step(step: str, in_dir: str | Path, out_dir: str | Path, *, site: str, subject: str,
             params: Mapping[str, Any] | None = None, declared: Declared | None = None,
             template_transform: str | Path | None = None) -> None:
    """Run preprocessing step ``step`` of one subject: ``in_dir`` (previous step folder) -> ``out_dir``."""
    kwargs = step_kwargs(step, params=params or {}, declared=declared, template_transform=template_transform)
    step_function(step)(Path(in_dir), Path(out_dir), site=site, subject=subject, **kwargs)
