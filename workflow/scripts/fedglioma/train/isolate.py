"""Run a step in a forked child process, so that its failure of any kind (an exception, an out-of-memory kill, a
crash inside a native library) is reported to the parent instead of taking the job down.

Fork, not spawn: the child inherits the job's logging (the rule's log file), environment and thread caps without
re-importing anything, and gets the same seeds, so a step gives the same bytes in a child as in-process. The
parent must not have started torch's thread pools before forking; the step functions import torch lazily.
The reason travels back as UTF-8 text through a pipe (nothing is unpickled).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def _child(func: Callable[..., Any], kwargs: Mapping[str, Any], conn: Any) -> None:
    code = 0
    try:
        func(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure is the child's report
        log.exception("%s failed", getattr(func, "__name__", func))
        conn.send_bytes(f"{type(exc).__name__}: {exc}".encode())
        code = 1
    finally:
        conn.close()
        for h in logging.getLogger().handlers:
            with contextlib.suppress(OSError, ValueError):  # a stream its owner already closed
                h.flush()
    os._exit(code)


def run_isolated(func: Callable[..., Any], **kwargs: Any) -> str | None:
    """``func(**kwargs)`` in a forked child process: ``None`` when it succeeded, else why it failed (the exception's
    type and message, or the signal that killed it)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(func, kwargs, send), daemon=False)
    proc.start()
    send.close()
    message = b""
    try:
        message = recv.recv_bytes()
    except EOFError:
        pass
    finally:
        recv.close()
    proc.join()
    if proc.exitcode == 0:
        return None
    if message:
        return message.decode(errors="replace")
    code = proc.exitcode if proc.exitcode is not None else -1
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process exited with code {code}"
