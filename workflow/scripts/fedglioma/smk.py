"""Helpers for the thin ``workflow/scripts/*.py`` entries called by Snakemake's ``script:``.

Each entry does only::

    from fedglioma.smk import run
    run(snakemake, some_function, arg=snakemake.input.x, ...)

which sends logging and warnings to the rule's ``log:`` file, caps the CPU
threads at the job's ``threads:``, and logs a :class:`~fedglioma.errors.FedgliomaError`
as one clear line before failing the job.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedglioma.errors import FedgliomaError
from fedglioma.logs import setup_logging
from fedglioma.threads import set_threads


def run(smk: Any, func: Callable[..., Any], /, **kwargs: Any) -> Any:
    """Run ``func(**kwargs)`` inside a Snakemake job with logging to ``smk.log[0]``."""
    log = smk.log[0] if len(smk.log) else None
    setup_logging(log)
    logging.captureWarnings(True)
    set_threads(smk.threads)
    logger = logging.getLogger(func.__module__)
    logger.info("%s (rule %s, wildcards %s)", func.__name__, smk.rule, dict(smk.wildcards))
    try:
        return func(**kwargs)
    except FedgliomaError as e:
        logger.error("%s", e)
        sys.exit(1)
    except Exception:
        logger.exception("unexpected error in %s", func.__name__)
        raise


def killed_outputs(workdir: str | Path = ".") -> list[str]:
    """Outputs of jobs that started and never finished (a hard kill), which do not exist now.

    Reads the file-based records of Snakemake 8/9 in ``.snakemake/incomplete/`` (a record's name is the urlsafe
    base64 of the path, split into ``@``-prefixed folders when longer than a file name may be); other backends
    yield nothing.
    """
    root = Path(workdir) / ".snakemake" / "incomplete"
    if not root.is_dir():
        return []
    out = []
    for dirpath, _, files in os.walk(root):
        prefix = "".join(part.removeprefix("@") for part in Path(dirpath).relative_to(root).parts)
        for name in files:
            try:
                path = base64.urlsafe_b64decode(prefix + name).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue  # not a record (e.g. migration_underway)
            if not (Path(workdir) / path).exists():
                out.append(path)
    return sorted(out)


def mark_killed_outputs(workdir: str | Path = ".") -> list[str]:
    """Make the never-written outputs of killed jobs visible to ``--rerun-incomplete``: an empty placeholder at
    each (:func:`killed_outputs`); returns their paths. Called by ``common.smk`` when the workflow is parsed.

    Snakemake marks every output of a job in ``.snakemake/incomplete/`` when the job starts, deletes those that
    exist, and removes the marks when the job succeeds or fails. It treats a marked output as incomplete only if
    the file exists: a job killed before its first output was renamed into place leaves nothing to see. Where the
    outputs of its consumers exist from an earlier run (the job ran because of ``--forcerun``, changed
    parameters, code or inputs), the resumed run would keep those consumers as they were and never redo the job.
    With the placeholder the output is incomplete like any other: the plain command refuses to go on
    (``IncompleteFilesException``), and ``--rerun-incomplete`` deletes it and reruns the job and its consumers. A
    placeholder is never read as an input: Snakemake refuses marked outputs.

    Nothing is done while ``.snakemake/locks/`` holds a lock: a run may be under way (its running jobs' outputs
    are marked and missing too), or the lock of a killed run has not been removed yet (``--unlock`` first).
    """
    workdir = Path(workdir)
    locks = workdir / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        return []
    killed = killed_outputs(workdir)
    for path in killed:
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    return killed
