"""Atomic file writes: write to a temporary sibling, then rename.

A crash or an exception never leaves a half-written output behind, which keeps
Snakemake's idea of "done" honest and makes interrupted runs resumable.

The temporary of ``dir/name`` is ``dir/.name.XXXXXXXX<suffix>`` (a file) or ``dir/.name.XXXXXXXX`` (a folder).
An exception removes it; a hard kill (SIGKILL, a lost node) cannot, so the next write of the same ``name``
removes the temporaries a dead writer left (:func:`remove_stale`): one file is never written by two live
processes at once (Snakemake runs one job per output), so any temporary of it found at the start of a write
is stale. A temporary is never read as an input: nothing looks for hidden ``.name.*`` siblings.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: Characters of the random part of a ``tempfile`` name (``tempfile._RandomNameSequence``), 8 of them.
_RANDOM = "[a-z0-9_]{8}"


def temporary_pattern(final: str | Path, suffix: str | None = None) -> re.Pattern[str]:
    """The names of the temporaries of ``final``: files (``suffix`` given) or folders (``suffix`` None).

    >>> bool(temporary_pattern("a/global.safetensors", ".safetensors").match(".global.safetensors.k2_x9a0b.safetensors"))
    True
    >>> bool(temporary_pattern("a/06_normalise").match(".06_normalise.k2_x9a0b"))
    True
    """
    name = Path(final).name
    return re.compile(rf"^\.{re.escape(name)}\.{_RANDOM}{re.escape(suffix or '')}$")


def remove_stale(final: str | Path, suffix: str | None = None) -> list[Path]:
    """Remove the temporaries of ``final`` (files with ``suffix``, or folders when ``suffix`` is None) that a
    writer killed before its rename left beside it; returns what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = temporary_pattern(final, suffix)
    removed = []
    for p in final.parent.iterdir():
        if pattern.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffix (e.g. ``.nii.gz``) so libraries
    that infer the format from the extension still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes) or ".tmp"
    remove_stale(final, suffix)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _default_mode())  # mkstemp creates 0600; outputs should be shareable
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode() | 0o111)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()  # e.g. the placeholder of a killed job's output (fedglioma.smk.mark_killed_outputs)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_mode() -> int:
    """0o666 minus the process umask (what ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def jsonable(obj: Any) -> Any:
    """A strict-JSON copy of ``obj``: numpy scalars and arrays become Python values, paths text, mapping keys
    text, and non-finite floats ``None`` (JSON has no NaN; ``json.dumps`` would write the non-standard ``NaN``).

    >>> jsonable({1: [float("nan"), 2.5], "p": Path("a/b")})
    {'1': [None, 2.5], 'p': 'a/b'}
    """
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """The package's one JSON encoding: :func:`jsonable`, sorted keys, strict (``allow_nan=False``)."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=True, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted, strict JSON (:func:`dumps`)."""
    write_text(path, dumps(obj) + "\n")
