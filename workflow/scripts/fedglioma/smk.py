"""Helpers for the thin ``workflow/scripts/*.py`` entries called by Snakemake's ``script:``.

Each entry does only::

    from fedglioma.smk import run
    run(snakemake, some_function, arg=snakemake.input.x, ...)

which sends logging and warnings to the rule's ``log:`` file, caps the CPU
threads at the job's ``threads:``, and logs a :class:`~fedglioma.errors.FedgliomaError`
as one clear line before failing the job.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from fedglioma.errors import FedgliomaError
from fedglioma.logs import setup_logging


def set_threads(n: int) -> None:
    """Cap BLAS/OpenMP/ITK/torch threads at ``n`` (the threads Snakemake gives the job).

    The environment variables are read when a library initialises, so jobs that never use torch do not pay for
    importing it (about 1.5 s per job); torch is capped directly only if it is already imported.
    """
    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


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
