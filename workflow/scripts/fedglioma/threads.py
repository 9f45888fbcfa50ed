"""CPU threads of a step: the one place that caps them, for a Snakemake job (:mod:`fedglioma.smk`), a subcommand
(:mod:`fedglioma.registry`) and a Flower role (:mod:`fedglioma.federation.roles`) alike."""

from __future__ import annotations

import os
import sys


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
