"""Fault points: named places in the code where a test (or a robustness study) makes a job fail or die.

A fault point is a call ``fault_point("local_train/SiteB/round-2/epoch-1")`` at a place where a real job can
fail. It does nothing unless the environment variable ``FEDGLIOMA_FAULTS`` names it::

    FEDGLIOMA_FAULTS="local_train/SiteB/round-2/*=raise"              # that job raises (every attempt)
    FEDGLIOMA_FAULTS="aggregate/round-1/after-model=kill"             # the workflow dies there (SIGKILL)
    FEDGLIOMA_FAULTS="a/*=raise;b/c=kill"                             # several entries, ';'-separated

Patterns are matched with :func:`fnmatch.fnmatchcase` against the point's name. Actions:

- ``raise``: raise :class:`InjectedFault` (an ordinary failure of the job: bad data, a full disk, a bug);
- ``kill``: SIGKILL this process's whole process group, i.e. the job and the ``snakemake`` that started it,
  as a lost node or a hard ``kill -9`` would (nothing gets to clean up).

The points are listed in ``docs/errors.md`` ("Fault points"). They are plain names, so the cost of an unset
variable is one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import signal

from fedglioma.errors import FedgliomaError

log = logging.getLogger(__name__)

ENV = "FEDGLIOMA_FAULTS"
ACTIONS = ("raise", "kill")


class InjectedFault(FedgliomaError):
    """A failure injected at a fault point (``FEDGLIOMA_FAULTS``)."""


def _entries(spec: str) -> list[tuple[str, str]]:
    out = []
    for raw in spec.split(";"):
        raw = raw.strip()
        if not raw:
            continue
        pattern, sep, action = raw.rpartition("=")
        if not sep or action not in ACTIONS or not pattern:
            raise ValueError(f"{ENV}: {raw!r} is not PATTERN=ACTION with ACTION one of {', '.join(ACTIONS)}")
        out.append((pattern, action))
    return out


def fault_point(name: str) -> None:
    """Fail or die here when ``FEDGLIOMA_FAULTS`` names this point (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for pattern, action in _entries(spec):
        if fnmatch.fnmatchcase(name, pattern):
            if action == "raise":
                raise InjectedFault(f"fault injected at {name} ({ENV}={spec})")
            log.warning("fault point %s: killing process group (%s)", name, ENV)
            for h in logging.getLogger().handlers:
                with contextlib.suppress(OSError, ValueError):  # a stream its owner already closed
                    h.flush()
            os.killpg(os.getpgid(0), signal.SIGKILL)
