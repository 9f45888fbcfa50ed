"""Lazy package exports (PEP 562): a sub-package's public names are imported on first use.

Reading a config or building the ``fedglioma`` command line must not import torch, scikit-learn or ANTsPy
(seconds per process, paid by every Snakemake job); a package ``__init__`` therefore maps each public
name to its submodule instead of importing them all::

    __getattr__, __dir__ = attach(__name__, {"FedAvg": "strategies", ...})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the
    submodule (relative to ``package``) that defines it; the value is cached in the package on first use."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
