"""Seeds derived from names, and a scope with deterministic torch settings."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts (stable across processes and platforms, unlike ``hash``).

    >>> derive_seed(42, "siteA", 1) == derive_seed(42, "siteA", 1)
    True
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def thread_record(threads: int | None) -> dict[str, int | None]:
    """The thread counts a result was computed with, for its sidecar: ``threads`` (what the job was given) and
    ``torch_threads`` (``torch.get_num_threads()`` now). Results on CPU are bit-identical only for the same count.
    """
    return {"threads": threads, "torch_threads": torch.get_num_threads()}


@contextlib.contextmanager
def deterministic(seed: int, *, threads: int | None = None, device: torch.device | None = None) -> Iterator[None]:
    """Scope with deterministic algorithms, a seeded global RNG and ``threads`` CPU threads.

    The global RNG state, the deterministic-algorithms setting and the thread count are restored on exit, so
    callers (and other tests in the same process) are not affected. On CPU the same inputs give bit-identical
    results for the same thread count; on CUDA, ops without a deterministic kernel only warn.
    """
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device is not None and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    devices = [torch.cuda.current_device()] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            if threads is not None and threads > 0:
                torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        torch.set_num_threads(prev_threads)
