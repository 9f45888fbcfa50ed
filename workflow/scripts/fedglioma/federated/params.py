"""Which parameters are shared with the server and which stay at the site."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def is_site_local(name: str, patterns: Sequence[str]) -> bool:
    """True when ``name`` matches one of the ``fnmatch`` ``patterns`` (case-sensitive).

    >>> is_site_local("encoders.0.norm1.weight", ["*.norm*"])
    True
    >>> is_site_local("encoders.0.conv1.weight", ["*.norm*"])
    False
    """
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def shared_names(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names that are sent to the server (not site-local), in the given order."""
    return [n for n in names if not is_site_local(n, patterns)]


def split_params(tensors: Mapping[str, T], patterns: Sequence[str]) -> tuple[dict[str, T], dict[str, T]]:
    """Split a state dict into ``(shared, site_local)``."""
    shared: dict[str, T] = {}
    local: dict[str, T] = {}
    for k, v in tensors.items():
        (local if is_site_local(k, patterns) else shared)[k] = v
    return shared, local
